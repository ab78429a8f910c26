"""Gradual rollout: a newly accepted batch model serves a share of the nodes first.

A version that passed its gate becomes a *canary*. Nodes whose ``node_id`` hashes below
``PAKIT_STREAM_CANARY_SHARE`` are served by it; the others keep the serving version. Both arms
are scored online on the same events (:meth:`Canary.add` takes both arms' quality on one
event, so each comparison is paired: for a labelled block, the cost of the codec each net picks;
for a read, whether the prefetch learner with each net had proposed it). The leader decides with
:meth:`Canary.verdict`: roll back as soon as the canary is worse with 95% confidence, promote
as soon as it is better, and otherwise decide by the sign of the mean after ``max_samples``
paired events (a canary that ties with the serving version is promoted: its gate found it
better on held-out data, and online it did no harm).
"""

from __future__ import annotations

import math
import zlib

from river import stats

__all__ = ["Canary", "in_canary"]

_Z95 = 1.959964


def in_canary(node_id: str | None, share: float) -> bool:
    """Whether ``node_id`` is among the ``share`` of nodes a canary serves: a stable hash,
    the same on every worker and across restarts.

    >>> in_canary("node-1", 0.0), in_canary("node-1", 1.0), in_canary(None, 0.5)
    (False, True, False)
    >>> 0.09 < sum(in_canary(f"node-{i}", 0.1) for i in range(10_000)) / 10_000 < 0.11
    True
    """
    if node_id is None or share <= 0.0:
        return False
    return zlib.crc32(node_id.encode()) / 0x1_0000_0000 < share


class Canary:
    """A candidate ``version`` of the model ``name``, served to ``share`` of the nodes while its
    online quality is compared with the serving version's."""

    def __init__(self, name: str, version: str, model, share: float) -> None:
        self.name, self.version, self.model, self.share = name, version, model, share
        self.serving_quality, self.canary_quality = stats.Mean(), stats.Mean()
        self.difference = stats.Mean()  # canary − serving, per event
        self._sem = stats.SEM()

    def serves(self, node_id: str | None) -> bool:
        return in_canary(node_id, self.share)

    def add(self, serving: float, canary: float) -> None:
        """Both arms' quality on one event (higher is better)."""
        self.serving_quality.update(serving)
        self.canary_quality.update(canary)
        self.difference.update(canary - serving)
        self._sem.update(canary - serving)

    @property
    def samples(self) -> int:
        return int(self.difference.n)

    def interval(self) -> tuple[float, float]:
        """95% interval of the mean difference, canary − serving (normal approximation)."""
        mean = self.difference.get()
        half = _Z95 * (self._sem.get() if self.samples > 1 else math.inf)
        return mean - half, mean + half

    def verdict(self, min_samples: int, max_samples: int) -> str | None:
        """``"promote"``, ``"rollback"``, or ``None`` while the evidence is too thin.

        >>> c = Canary("m", "v2", None, 0.1)
        >>> for i in range(300):
        ...     c.add(0.5, 0.4 + 0.01 * (i % 3))
        >>> c.verdict(min_samples=100, max_samples=1000)
        'rollback'
        """
        if self.samples < min_samples:
            return None
        lo, hi = self.interval()
        if hi < 0:
            return "rollback"
        if lo > 0:
            return "promote"
        if self.samples >= max_samples:
            return "promote" if self.difference.get() >= -1e-9 else "rollback"  # ties promote
        return None

    def report(self) -> dict:
        lo, hi = self.interval()
        return {"version": self.version, "share": self.share, "samples": self.samples,
                "serving_quality": self.serving_quality.get(),
                "canary_quality": self.canary_quality.get(),
                "difference_ci95": [lo, hi]}
