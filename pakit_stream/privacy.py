"""Privacy beyond the contract: Laplace noise on the aggregates the daemon exports, and
k-anonymity before data is used for training.

The contract already keeps content out (``docs/events.md``). What remains identifying is
*behaviour*: a node's cache hit ratio, its fetch rewards, the blocks it alone reads.

* :func:`private_mean` releases the mean of ``n`` values bounded in ``[lower, upper]`` with
  ε-differential privacy at the event level. Changing one event moves the mean by at most
  ``(upper - lower) / n``, so Laplace noise of scale ``sensitivity / ε`` is added. The daemon
  (``PAKIT_STREAM_DP_EPSILON`` > 0) re-releases each quality figure at most once per
  ``PAKIT_STREAM_DP_RELEASE_S``; every release spends ε, and the raw values never leave the
  process.
* :func:`k_anonymous` keeps a record only if its quasi-identifier is shared by at least ``k``
  distinct individuals. For the prefetch model (``PAKIT_STREAM_K_ANONYMITY``), individuals are
  nodes and the quasi-identifier is the block read: a block that fewer than ``k`` nodes read
  would reveal what those nodes read, so it never enters a training window.
* :class:`Crowds` applies the same rule online, to what a hint reveals: it counts, per key (a
  block read, an object read, a block fingerprinted, a peer fetched from, a topic), the
  distinct nodes that reported it, up to ``k``. With ``PAKIT_STREAM_K_ANONYMITY`` > 1 a hint
  names only keys at least ``k`` nodes reported, and answers from pooled state only, never from
  what the calling node alone sent (``HintService``).

>>> import random
>>> rng = random.Random(0)
>>> released = [private_mean(700.0, 1000, epsilon=1.0, rng=rng) for _ in range(2000)]
>>> abs(sum(released) / len(released) - 0.7) < 0.001   # unbiased (before clipping)
True
>>> reads = [("n1", "a"), ("n2", "a"), ("n1", "b"), ("n3", "a")]
>>> kept, report = k_anonymous(reads, individual=lambda r: r[0], quasi=lambda r: r[1], k=2)
>>> kept, report.suppressed, report.smallest_kept
([('n1', 'a'), ('n2', 'a'), ('n3', 'a')], 1, 3)
>>> crowds = Crowds(k=2)
>>> for node, block in reads:
...     crowds.add("read", block, node)
>>> crowds.known("read", "a"), crowds.known("read", "b")
(True, False)
"""

from __future__ import annotations

import math
import random
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from pakit_stream.exceptions import UsageError

__all__ = ["laplace", "private_mean", "k_anonymous", "KAnonymityReport", "Crowds"]

R = TypeVar("R")


def laplace(scale: float, rng: random.Random) -> float:
    """One draw of Laplace(0, ``scale``) by inverse transform."""
    u = rng.random() - 0.5
    return -scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u))


def private_mean(total: float, n: int, epsilon: float, rng: random.Random,
                 lower: float = 0.0, upper: float = 1.0) -> float:
    """ε-DP release of ``total / n`` for ``n`` values in ``[lower, upper]``, clipped back into
    that range (clipping is post-processing: it costs no privacy)."""
    if epsilon <= 0:
        raise UsageError("epsilon must be positive")
    if n <= 0:  # nothing observed: nothing to protect; report the floor, as an empty mean does
        return lower
    noisy = total / n + laplace((upper - lower) / (n * epsilon), rng)
    return min(max(noisy, lower), upper)


@dataclass(frozen=True)
class KAnonymityReport:
    k: int
    groups: int  # distinct quasi-identifier values
    kept_groups: int
    suppressed: int  # records dropped
    smallest_kept: int  # fewest individuals behind a kept value (0 if none kept)

    @property
    def satisfied(self) -> bool:
        """Whether the input already was k-anonymous (nothing had to be dropped)."""
        return self.suppressed == 0


def k_anonymous(records: Iterable[R], individual: Callable[[R], Hashable],
                quasi: Callable[[R], Hashable], k: int) -> tuple[list[R], KAnonymityReport]:
    """The records whose quasi-identifier is shared by at least ``k`` distinct individuals, in
    their order, and what was suppressed."""
    records = list(records)
    who: dict[Hashable, set] = defaultdict(set)
    for r in records:
        who[quasi(r)].add(individual(r))
    ok = {q for q, people in who.items() if len(people) >= k}
    kept = [r for r in records if quasi(r) in ok]
    report = KAnonymityReport(k, len(who), len(ok), len(records) - len(kept),
                              min((len(who[q]) for q in ok), default=0))
    return kept, report


class Crowds:
    """Which keys at least ``k`` distinct nodes reported, per namespace, online and bounded.

    A key holds the CRC-32s of the nodes seen so far (two nodes sharing one count as one:
    an error on the safe side) until there are ``k``, then only a flag. Each namespace keeps
    its ``capacity`` most recently reported keys (``capacities`` sets it per namespace); a key
    evicted is unknown again.
    """

    _DONE = True

    def __init__(self, k: int, capacity: int = 100_000,
                 capacities: dict[str, int] | None = None) -> None:
        if k < 1 or capacity < 1 or any(c < 1 for c in (capacities or {}).values()):
            raise UsageError("k and capacities must be at least 1")
        self.k, self.capacity, self.capacities = k, capacity, dict(capacities or {})
        self._spaces: dict[str, OrderedDict[Hashable, set[int] | bool]] = {}

    def add(self, space: str, key: Hashable, node: str) -> None:
        """Record that ``node`` reported ``key`` in ``space``."""
        seen = self._spaces.get(space)
        if seen is None:
            seen = self._spaces[space] = OrderedDict()
        nodes = seen.get(key)
        if nodes is None:
            nodes = seen[key] = set()
            if len(seen) > self.capacities.get(space, self.capacity):
                seen.popitem(last=False)
        else:
            seen.move_to_end(key)
            if nodes is self._DONE:
                return
        nodes.add(zlib.crc32(node.encode()))
        if len(nodes) >= self.k:
            seen[key] = self._DONE

    def known(self, space: str, key: Hashable) -> bool:
        """Whether at least ``k`` distinct nodes reported ``key`` in ``space``."""
        seen = self._spaces.get(space)
        return seen is not None and seen.get(key) is self._DONE

    def __len__(self) -> int:
        return sum(len(s) for s in self._spaces.values())
