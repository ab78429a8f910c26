"""Round-trip times between real hosts, in time slices, and fetches drawn from them.

An RTT data set is a directory (or a ``.tar.xz`` / ``.tar.gz`` of one) of tab- or
space-separated square matrices, one file per time slice named ``NAME_t`` with ``t = 1, 2, …``
in time order; ``0`` off the diagonal means "not measured". ``unit`` says whether the values
are seconds or milliseconds.

:class:`PeerReplay` turns a matrix into fetches. One host is the requesting node; at every
step it holds a block that ``k`` other hosts (3 to 8, drawn at random) can serve. Fetching
from peer ``p`` at slice ``t``:

* fails if the pair was not measured at ``t`` (the peer is unreachable) or, otherwise, with
  probability ``loss``; a failure costs ``timeout_ms``;
* else takes ``rtt[t, node, p] * exp(N(0, noise))`` ms: the measured RTT with log-normal
  jitter (``noise`` = 0.1 by default, about ±10%).

Every ``fetches_per_slice`` steps the clock moves to the next slice, so the best peer changes
as the real network did. The random draws of a step (jitter and loss, one per candidate) are
fixed when the step is made, so policies compared on the same steps face the same luck.

>>> import numpy as np
>>> m = RttMatrix(np.array([[[0, 10, 50], [10, 0, 20], [50, 20, 0]]], dtype=float), unit="ms")
>>> replay = PeerReplay(m, node=0, fetches_per_slice=5, seed=1)
>>> step = next(replay.steps())
>>> sorted(step.candidates), step.expected_ms(1) < step.expected_ms(2)
([1, 2], True)
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pakit_stream.exceptions import DataError, UsageError

__all__ = ["RttMatrix", "PeerReplay", "FetchStep"]

_SLICE = re.compile(r"^(?P<name>.+)_(?P<t>\d+)$")


class RttMatrix:
    """``ms[t, i, j]``: RTT in milliseconds from host ``i`` to ``j`` at slice ``t``; NaN where
    not measured (and on the diagonal)."""

    def __init__(self, values: np.ndarray, unit: str = "ms") -> None:
        if unit not in ("s", "ms"):
            raise UsageError("unit must be 's' or 'ms'")
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 3 or values.shape[1] != values.shape[2]:
            raise DataError(f"expected slices of square matrices, got shape {values.shape}")
        ms = values * (1000.0 if unit == "s" else 1.0)
        ms[ms <= 0] = np.nan
        idx = np.arange(ms.shape[1])
        ms[:, idx, idx] = np.nan
        self.ms = ms.astype(np.float32)

    def window(self, start: int, stop: int) -> RttMatrix:
        """Slices ``start`` to ``stop - 1`` (a view, no copy): for splits in time."""
        part = RttMatrix.__new__(RttMatrix)
        part.ms = self.ms[start:stop]
        return part

    @property
    def slices(self) -> int:
        return self.ms.shape[0]

    @property
    def hosts(self) -> int:
        return self.ms.shape[1]

    @classmethod
    def load(cls, path: Path | str, unit: str, max_slices: int | None = None) -> RttMatrix:
        """Read every ``NAME_t`` matrix under ``path`` (a directory or a tar archive)."""
        path = Path(path)
        files: dict[int, bytes] = {}
        if path.is_dir():
            for p in path.rglob("*"):
                m = _SLICE.match(p.name)
                if m and p.is_file():
                    files[int(m["t"])] = p.read_bytes()
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                for member in tar:
                    m = _SLICE.match(Path(member.name).name)
                    if m and member.isfile():
                        files[int(m["t"])] = tar.extractfile(member).read()
        else:
            raise DataError(f"{path}: neither a directory nor a tar archive of NAME_t matrices")
        if not files:
            raise DataError(f"{path}: no matrix files named NAME_t (t = 1, 2, ...)")
        order = sorted(files)[:max_slices]
        mats = []
        for t in order:
            try:
                mats.append(np.loadtxt(io.BytesIO(files[t]), ndmin=2))
            except ValueError as exc:
                raise DataError(f"{path}: slice {t} is not a matrix of numbers ({exc})") from None
        shapes = {m.shape for m in mats}
        if len(shapes) != 1:
            raise DataError(f"{path}: slices differ in shape: {sorted(shapes)}")
        return cls(np.stack(mats), unit)


@dataclass(frozen=True)
class FetchStep:
    """One fetch decision: who asks, which peers can serve, at which slice."""

    index: int
    slice: int
    candidates: tuple[int, ...]
    replay: PeerReplay
    jitter: tuple[float, ...]  # per candidate: N(0, noise)
    luck: tuple[float, ...]  # per candidate: U(0, 1), lost below ``loss``

    @property
    def node(self) -> int:
        """The requesting host."""
        return self.replay.node

    @property
    def ts(self) -> float:
        """When the fetch happens, in fetch periods: every host fetches once per period."""
        return float(self.index)

    def expected_ms(self, peer: int) -> float:
        """The mean cost of fetching from ``peer`` now, failures at the timeout."""
        return self.replay.expected_ms(self.slice, peer)

    def fetch(self, peer: int) -> tuple[bool, float]:
        """``(success, latency_ms)`` of fetching from ``peer`` (one of the candidates)."""
        i = self.candidates.index(peer)
        return self.replay.outcome(self.slice, peer, self.jitter[i], self.luck[i])


class PeerReplay:
    def __init__(self, matrix: RttMatrix, node: int, fetches_per_slice: int = 20,
                 loss: float = 0.01, noise: float = 0.1, timeout_ms: float = 2000.0,
                 candidates: tuple[int, int] = (3, 8), seed: int = 0) -> None:
        self.matrix, self.node = matrix, node
        self.fetches_per_slice, self.loss, self.noise = fetches_per_slice, loss, noise
        self.timeout_ms, self.candidate_range = timeout_ms, candidates
        self.rng = np.random.default_rng(seed)
        self._peers = np.array([h for h in range(matrix.hosts) if h != node])
        # mean of the jitter exp(N(0, s)) is exp(s^2 / 2)
        self._jitter_mean = math.exp(noise * noise / 2)

    def peer_name(self, peer: int) -> str:
        return f"host-{peer:03d}"

    def expected_ms(self, t: int, peer: int) -> float:
        rtt = self.matrix.ms[t, self.node, peer]
        if math.isnan(rtt):
            return self.timeout_ms
        return (1 - self.loss) * float(rtt) * self._jitter_mean + self.loss * self.timeout_ms

    def outcome(self, t: int, peer: int, jitter: float, luck: float) -> tuple[bool, float]:
        """``(success, latency_ms)`` of a fetch from ``peer`` at slice ``t``, given its draws."""
        rtt = self.matrix.ms[t, self.node, peer]
        if math.isnan(rtt) or luck < self.loss:
            return False, self.timeout_ms
        return True, float(rtt) * math.exp(jitter)

    def steps(self) -> Iterator[FetchStep]:
        i = 0
        for t in range(self.matrix.slices):
            for _ in range(self.fetches_per_slice):
                yield self.step(i, t)
                i += 1

    def step(self, index: int, t: int, rng: np.random.Generator | None = None) -> FetchStep:
        """Fetch ``index`` at slice ``t``: its candidates and their draws, from ``rng`` (this
        replay's own by default)."""
        rng = self.rng if rng is None else rng
        lo, hi = self.candidate_range
        hi = min(hi, self._peers.size)
        k = int(rng.integers(min(lo, hi), hi + 1))
        cands = tuple(int(p) for p in rng.choice(self._peers, k, replace=False))
        return FetchStep(index, t, cands, self, tuple(rng.normal(0.0, self.noise, k)),
                         tuple(rng.random(k)))

    def event(self, step: FetchStep, peer: int, success: bool, latency_ms: float) -> dict:
        """The ``peer_fetch`` event a node logs for a fetch."""
        return {"event_type": "peer_fetch", "node_id": self.peer_name(self.node),
                "ts": float(step.index), "block_hash": f"{step.index:064x}",
                "peer_id": self.peer_name(peer),
                "candidates": [self.peer_name(p) for p in step.candidates], "success": success,
                "latency_ms": round(min(latency_ms, 86_400_000.0), 3), "block_size": 65536,
                "context": {}}
