"""How much a prefetch costs a node's LRU cache, learned from the node's reads.

A block prefetched into a full LRU cache of ``C`` blocks evicts the block at depth ``C``. That
eviction costs a hit only if the victim is read again before the cache would have evicted it
anyway, that is, while it still sits at depth ``C``: with ``d`` the stack (reuse) distance of a
read, the chance is the hazard ``P(d = C | d >= C)`` (a first read has ``d`` infinite). A
prefetch pays when the proposal's chance of being read exceeds that cost, so the hazard is the
confidence threshold below which nothing should be prefetched.

:class:`ReuseProfile` estimates the stack-distance distribution of one stream in bounded memory
and time with fixed-size SHARDS (Waldspurger et al., FAST '15): only reads of blocks whose hash
falls under a threshold are followed, the threshold is lowered so that at most ``max_tracked``
blocks are followed, and a sampled distance is scaled by the sampling rate. Distances go into
log-spaced bins with exponentially decayed counts, so the profile follows the stream's phases.

>>> r = ReuseProfile(max_tracked=64)
>>> for rep in range(50):            # a loop over 40 blocks, read over and over
...     for b in range(40):
...         r.observe(f"block-{b}")
>>> r.hazard(20) < 0.01 < r.hazard(40)  # nothing is reused at depth 20; everything at depth 40
True
"""

from __future__ import annotations

import hashlib
import heapq
import math

import numpy as np

__all__ = ["ReuseProfile"]

_SPACE = 1 << 60  # hashes are 60-bit integers
_PER_OCTAVE = 16  # log bins: sixteen per doubling of the distance (4.4% wide)
_BINS = 48 * _PER_OCTAVE  # distances up to 2^48


def _hash(block: str) -> int:
    return int.from_bytes(hashlib.blake2b(block.encode(), digest_size=8).digest(), "big") >> 4


def _bin(distance: float) -> int:
    return min(_BINS - 1, int(math.log2(max(distance, 1.0)) * _PER_OCTAVE))


class ReuseProfile:
    """Sampled stack distances of one stream of reads, and the LRU eviction hazard they give.

    Parameters
    ----------
    max_tracked
        Blocks followed at most (the sample); memory is a few hundred bytes per block.
    halflife
        Sampled reads after which a distance counts half.
    min_samples
        Sampled reads (decayed) below which :meth:`hazard` answers ``None``.
    """

    def __init__(self, max_tracked: int = 1024, halflife: float = 4_000.0,
                 min_samples: float = 64.0) -> None:
        self.max_tracked, self.min_samples = max_tracked, min_samples
        self.threshold = _SPACE  # blocks hashing below it are sampled
        self.growth = 0.5 ** (-1.0 / halflife)  # weights grow instead of counts decaying
        self.weight = 1.0
        self.counts = np.zeros(_BINS + 1)  # the last bin holds first reads (infinite distance)
        self._last: dict[str, int] = {}  # sampled block -> time of its last read
        self._largest: list[tuple[int, str]] = []  # (-hash, block): the next to stop following
        self._marks = [0] * (4 * max_tracked + 1)  # a Fenwick tree over read times
        self._time = 0

    @property
    def rate(self) -> float:
        """The share of blocks sampled."""
        return self.threshold / _SPACE

    def observe(self, block: str) -> None:
        """Learn one read."""
        h = _hash(block)
        if h >= self.threshold:
            return
        if self._time + 1 >= len(self._marks):
            self._compact()
        self._time += 1
        before = self._last.get(block)
        if before is None:
            slot = _BINS
            heapq.heappush(self._largest, (-h, block))
        else:
            # distinct sampled blocks read since, scaled by the sampling rate
            between = self._sum(self._time - 1) - self._sum(before)
            slot = _bin((between + 1) / self.rate)
            self._add(before, -1)
        self._last[block] = self._time
        self._add(self._time, 1)
        self.counts[slot] += self.weight
        self.weight *= self.growth
        if self.weight > 1e100:
            self.counts /= self.weight
            self.weight = 1.0
        while len(self._last) > self.max_tracked:  # follow fewer: lower the threshold
            neg, gone = heapq.heappop(self._largest)
            self.threshold = -neg
            self._add(self._last.pop(gone), -1)

    def hazard(self, cache_blocks: int) -> float | None:
        """The chance that the block at depth ``cache_blocks`` of an LRU cache is read before
        it moves deeper: what one prefetch into a full cache of that size costs, in hits.
        ``None`` until enough reads were sampled."""
        total = self.counts.sum()
        if total < self.min_samples * self.weight or cache_blocks < 1:
            return None
        # the density of distances around the depth (an eighth of an octave either side,
        # against the sampling's coarseness), over the reads at least that deep
        low, high = cache_blocks * 2 ** -0.125, cache_blocks * 2 ** 0.125
        density = (self._deeper(low) - self._deeper(high)) / (high - low)
        survivors = self._deeper(cache_blocks)
        return 0.0 if survivors <= 0 else float(min(1.0, density / survivors))

    def _deeper(self, distance: float) -> float:
        """The decayed count of reads at least ``distance`` deep (first reads included),
        taking a bin's reads as spread evenly over it."""
        b = _bin(distance)
        low, high = 2.0 ** (b / _PER_OCTAVE), 2.0 ** ((b + 1) / _PER_OCTAVE)
        share = min(1.0, (high - distance) / (high - low))
        return self.counts[b] * share + self.counts[b + 1:].sum()

    # the Fenwick tree over read times (1-based): how many followed blocks were last read when
    def _add(self, i: int, v: int) -> None:
        marks = self._marks
        while i < len(marks):
            marks[i] += v
            i += i & -i

    def _sum(self, i: int) -> int:
        s, marks = 0, self._marks
        while i > 0:
            s += marks[i]
            i -= i & -i
        return s

    def _compact(self) -> None:
        """Renumber the followed blocks' last reads 1..n, oldest first, so times stay small."""
        order = sorted(self._last, key=self._last.__getitem__)
        self._marks = [0] * len(self._marks)
        self._last = {}
        for t, block in enumerate(order, 1):
            self._last[block] = t
            self._add(t, 1)
        self._time = len(order)
