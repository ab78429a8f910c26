"""Near-duplicate blocks: a bounded, streaming MinHash LSH index in a few numpy arrays.

Signatures are the 128 32-bit MinHash values nodes send (datasketch, see
:mod:`pakit_stream.events.fingerprint`). The index follows datasketch's banding, with its own
storage:

* **Banding, weighted towards recall.** ``bands × rows`` comes from datasketch's parameter
  search at the index threshold with false positives weighted 0.1 and false negatives 0.9: at
  0.7, 20 bands of 6 rows, so a pair at J = 0.8 shares a band with probability 0.998 and one at
  J = 0.5 with 0.27. Candidates are cheap to reject (below), misses are not recoverable.
* **Verification.** Every candidate is checked on its signature: the estimated Jaccard must
  reach the query's ``min_jaccard`` (the index threshold unless given); answers are ranked by
  it. Only the low 8 bits of each value are kept (b-bit minwise hashing, Li & König): two
  different values agree there 1 time in 256, which the estimate corrects,
  ``Ĵ = (E − 1/256) / (1 − 1/256)`` clipped to [0, 1], where ``E`` is the share of equal
  slots. Band hashes are taken from the full 32-bit values when a block is inserted.
* **Storage.** Entries live in a ring of ``capacity`` slots, oldest overwritten first. Per band,
  an int32 array of ``M`` bucket heads (``M`` the power of two ≥ ``capacity``; a band hash's
  top bits pick the bucket) starts a chain through an int32 ``next`` pointer per entry and band,
  newest first. Per slot: the 32 raw bytes of the block hash, 128 one-byte signature values,
  one 32-bit hash per band (which also filters out the other hashes sharing a bucket) and an
  insertion stamp. A chain walk stops at the first slot that now holds a newer entry or one of
  another bucket: the entry it linked to was overwritten, so everything after it, older, was
  too. Block hash → slot is a numpy open-addressing table (linear probing, at most half
  full) keyed by a 64-bit hash of the 32 bytes, all 32 compared on a hit. In all
  ``177 + 8 × bands`` bytes per slot, ``4 × bands`` per bucket and 16–32 per slot for the
  table: 417 MB (2^20 B) at a million entries and 20 bands.
* **Bounded work.** A query walks at most ``max_chain`` links per band and verifies at most
  ``max_candidates`` signatures, however many identical or colliding fingerprints there are:
  at most ``bands × max_chain`` links and ``max_candidates`` rows of 128 bytes. Past that,
  the newest entries are the ones seen; ``capped_queries`` counts the queries that hit a cap.
* **Re-seen blocks.** A block already indexed is only re-seen: if it sits in the older half
  of the ring it moves to the front (its old slot stays as a dead link, skipped by queries,
  until the ring comes round), so blocks seen again and again are not evicted; in the newer
  half nothing happens, so hot blocks cost no slots.

Checkpoints keep the live entries only (block hash, one-byte signature, band hashes and
insertion stamp: ``40 + 4 × bands`` bytes each) with the band parameters and counters; loading
puts each entry back in its slot and rebuilds the chains in one vectorised pass: the same
answers, the same evictions to come.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = rng.integers(0, 2**32, 128)
>>> near = base.copy(); near[:10] = rng.integers(0, 2**32, 10)
>>> dedup = DeduplicationOptimizer(threshold=0.7)
>>> (dedup.bands, dedup.rows)
(20, 6)
>>> dedup.add("aa" * 32, base); dedup.add("bb" * 32, near)
>>> dedup.add_many(["cc" * 32, "dd" * 32], rng.integers(0, 2**32, (2, 128)))
>>> [(h["block_hash"][:6], h["jaccard"]) for h in dedup.find_similar_blocks("aa" * 32)]
[('bbbbbb', 0.9216)]
>>> [(h["block_hash"][:6], h["jaccard"]) for h in dedup.query(near, min_jaccard=0.5)]
[('bbbbbb', 1.0), ('aaaaaa', 0.9216)]
>>> [h["block_hash"][:6] for h in dedup.query(near, min_jaccard=0.95)]  # verified at 0.95
['bbbbbb']
"""

from __future__ import annotations

import functools
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasketch.lsh import _optimal_param

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.events.fingerprint import MINHASH_SEED
from pakit_stream.events.schema import MINHASH_PERM
from pakit_stream.exceptions import UsageError

__all__ = ["DeduplicationOptimizer", "band_params"]

#: false positive / false negative weights of the band search: a missed near-duplicate is
#: lost for good, a false candidate only costs one verified signature
FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT = 0.1, 0.9
HASH_BYTES = 32
_CHANCE = 1 / 256  # two different values agree on their low 8 bits this often
_WORDS = struct.Struct("<4Q")
_U32 = np.uint64(32)
_HIGH = 1 if sys.byteorder == "little" else 0  # the high half of a uint64 seen as 2 uint32
_CHUNK = 1 << 14  # entries per vectorised insert pass: temporaries stay in cache
_MASK64 = (1 << 64) - 1
_NEWEST = 1 << 62


@functools.lru_cache(maxsize=None)
def band_params(threshold: float, num_perm: int = MINHASH_PERM) -> tuple[int, int]:
    """``(bands, rows)`` for an index at ``threshold``, weighted towards recall.

    >>> band_params(0.7)
    (20, 6)
    """
    return _optimal_param(threshold, num_perm, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)


def _pow2(n: int) -> int:
    return 1 << max(4, int(n - 1).bit_length())


class DeduplicationOptimizer(OnlineModel):
    """Blocks similar to a block, from their MinHash signatures (see the module docstring).

    Parameters
    ----------
    threshold
        Jaccard similarity the banding targets, and the default ``min_jaccard`` of a query.
    capacity
        Blocks kept; the oldest are evicted first.
    num_perm
        Values per signature.
    max_candidates
        Signatures one query verifies at most.
    max_chain
        Links one query walks per band at most.
    """

    default_name = "dedup_optimizer"

    def __init__(self, model_config: ModelConfig | None = None, *, threshold: float = 0.7,
                 capacity: int = 100_000, num_perm: int = MINHASH_PERM,
                 max_candidates: int = 256, max_chain: int = 64) -> None:
        super().__init__(model_config)
        if not 0 < threshold < 1:
            raise UsageError(f"threshold must be in (0, 1), got {threshold}")
        if not 1 <= capacity < 2**31 - 1:  # links are int32 slot numbers + 1
            raise UsageError(f"capacity must be from 1 to 2^31 − 2, got {capacity}")
        if max_candidates < 1 or max_chain < 1:
            raise UsageError("max_candidates and max_chain must be positive")
        self.threshold, self.capacity, self.num_perm = threshold, capacity, num_perm
        self.max_candidates, self.max_chain = max_candidates, max_chain
        self.bands, self.rows = band_params(threshold, num_perm)
        # vector multiply-shift over the rows of a band (universal for 32-bit values); fixed
        # seed, and checkpointed, so band hashes from any process compare
        rng = np.random.default_rng([MINHASH_SEED, self.bands, self.rows])
        self._mult = rng.integers(1, 2**63, (self.bands, self.rows), dtype=np.uint64) * 2 + 1
        self.evictions = 0
        self.skipped = 0
        self.capped_queries = 0
        self.last_query_seconds = 0.0
        self.last_query_links = 0  # chain links the last query walked
        self.last_query_candidates = 0  # signatures it verified
        self._allocate()

    # -- storage -----------------------------------------------------------------------------
    def _allocate(self) -> None:
        cap, b = self.capacity, self.bands
        m = _pow2(cap)
        self._mbits = m.bit_length() - 1
        self._shift = 32 - self._mbits  # a band hash's top bits pick its bucket
        self._shift64 = np.uint64(self._shift + 32)
        self._offsets = np.arange(b, dtype=np.int64) * m
        self._offsets64 = self._offsets.astype(np.uint64)
        # links are slot + 1 so that zero means "none" and np.zeros costs nothing until used
        self._heads = np.zeros(b * m, dtype=np.int32)
        self._next = np.zeros((cap, b), dtype=np.int32)
        self._bh = np.zeros((cap, b), dtype=np.uint32)
        self._sig8 = np.zeros((cap, self.num_perm), dtype=np.uint8)
        self._raw = np.zeros((cap, HASH_BYTES), dtype=np.uint8)
        self._key = np.zeros(cap, dtype=np.uint64)  # the table's key of each slot's hash
        self._stamp = np.zeros(cap, dtype=np.int64)  # insertion number + 1; 0: never filled
        self._alive = np.zeros(cap, dtype=bool)
        # the table's key: all 32 bytes hashed with multipliers drawn per process (the table
        # is rebuilt on load), so no one can line block hashes up on one probe sequence
        self._kmult = np.random.default_rng().integers(1, 2**63, 4, dtype=np.uint64) * 2 + 1
        self._kmult_py = [int(m) for m in self._kmult]
        t = _pow2(4 * cap)
        self._tbits, self._tmask = t.bit_length() - 1, t - 1
        self._table = np.zeros(t, dtype=np.int32)  # slot + 1; 0 empty; -1 deleted
        self._table_used = 0
        # memoryviews: the cheapest reads and writes of single values from Python
        self._views = (memoryview(self._stamp), memoryview(self._next.reshape(-1)),
                       memoryview(self._bh.reshape(-1)), memoryview(self._alive),
                       memoryview(self._raw.reshape(-1)), memoryview(self._key),
                       memoryview(self._table))
        self._count = 0  # insertions so far (the next stamp - 1)
        self._size = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the index's arrays (what a million entries cost, without Python)."""
        return sum(a.nbytes for a in (self._heads, self._next, self._bh, self._sig8, self._raw,
                                      self._key, self._stamp, self._alive, self._table))

    def __len__(self) -> int:
        return self._size

    def __contains__(self, block_hash: str) -> bool:
        return self._slot_of(block_hash) >= 0

    def _slot_of(self, block_hash: Any) -> int:
        try:
            return self._find(bytes.fromhex(block_hash))
        except (TypeError, ValueError):
            return -1

    # -- block hash → slot -------------------------------------------------------------------
    def _keys(self, raws: np.ndarray) -> np.ndarray:
        v = raws.view(np.uint64) * self._kmult  # wraps modulo 2^64
        return np.add.reduce(v, axis=1)

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys >> np.uint64(64 - self._tbits)).astype(np.int64)

    def _key_of(self, raw: bytes) -> int:
        a, b, c, d = _WORDS.unpack(raw)
        m = self._kmult_py
        return (a * m[0] + b * m[1] + c * m[2] + d * m[3]) & _MASK64

    def _find(self, raw: bytes, key: int | None = None) -> int:
        """Slot of an indexed block hash, or -1."""
        if len(raw) != HASH_BYTES:
            return -1
        key = self._key_of(raw) if key is None else key
        pos, mask = key >> (64 - self._tbits), self._tmask
        _, _, _, _, raws, keys, table = self._views
        while (t := table[pos]) != 0:
            if t > 0 and keys[t - 1] == key and raws[(t - 1) * HASH_BYTES:t * HASH_BYTES] == raw:
                return t - 1
            pos = (pos + 1) & mask
        return -1

    def _find_many(self, raws: np.ndarray) -> np.ndarray:
        keys = self._keys(raws)
        pos, out = self._home(keys), np.full(len(raws), -1, dtype=np.int64)
        todo = np.arange(len(raws))
        while todo.size:
            t = self._table[pos[todo]].astype(np.int64)
            hit = t > 0
            hit[hit] = self._key[t[hit] - 1] == keys[todo[hit]]
            if hit.any():
                hit[hit] = (self._raw[t[hit] - 1] == raws[todo[hit]]).all(axis=1)
            out[todo[hit]] = t[hit] - 1
            todo = todo[~(hit | (t == 0))]
            pos[todo] = (pos[todo] + 1) & self._tmask
        return out

    def _table_add(self, slots: np.ndarray) -> None:
        """Enter block hashes known to be absent (their slots already hold them)."""
        pos, todo = self._home(self._key[slots]), np.arange(len(slots))
        while todo.size:
            p = pos[todo]
            free = self._table[p] == 0
            cells, first = np.unique(p[free], return_index=True)
            won = todo[free][first]  # one claimant per empty cell; the others probe on
            self._table[cells] = slots[won] + 1
            taken = np.zeros(len(slots), dtype=bool)
            taken[won] = True
            todo = todo[~taken[todo]]
            pos[todo] = (pos[todo] + 1) & self._tmask
        self._table_used += len(slots)
        if self._table_used > (self._tmask + 1) // 2:
            self._rebuild_table()

    def _rebuild_table(self) -> None:
        # deleted cells lengthen the probes; at most half the cells used, they stay short
        self._table[:] = 0
        self._table_used = 0
        self._table_add(np.flatnonzero(self._alive))

    def _table_remove(self, slots: np.ndarray) -> None:
        pos, todo = self._home(self._key[slots]), np.arange(len(slots))
        while todo.size:
            hit = self._table[pos[todo]] == slots[todo] + 1
            self._table[pos[todo[hit]]] = -1
            todo = todo[~hit]
            pos[todo] = (pos[todo] + 1) & self._tmask

    # -- signatures --------------------------------------------------------------------------
    def _signatures(self, minhash, many: bool) -> np.ndarray:
        sig = minhash
        if not (isinstance(sig, np.ndarray) and sig.dtype == np.uint32):
            try:
                sig = np.asarray(minhash)
                if sig.dtype.kind not in "iu":  # floats, or integers beyond 64 bits
                    raise UsageError(f"not integers ({sig.dtype})")
                if sig.size and (sig.min() < 0 or sig.max() > 0xFFFFFFFF):
                    raise UsageError("values out of range")
            except (TypeError, ValueError, OverflowError) as exc:
                raise UsageError(f"minhash must hold integers 0 – 2^32−1 ({exc})") from None
        if sig.ndim != (2 if many else 1) or sig.shape[-1] != self.num_perm:
            raise UsageError(f"minhash must have {self.num_perm} values, got {sig.shape}")
        return sig.astype(np.uint32, copy=False)

    def _band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """32-bit hash of each band of each signature, ``(n, bands)``."""
        v = sigs[:, :self.bands * self.rows].reshape(-1, self.bands, self.rows).astype(np.uint64)
        v *= self._mult  # wraps modulo 2^64: the top 32 bits of the sum are the hash
        return (np.add.reduce(v, axis=2) >> _U32).astype(np.uint32)

    def _band_hashes_one(self, sig: np.ndarray) -> np.ndarray:
        """:meth:`_band_hashes` of one signature in fewer numpy calls (the per-event path),
        before the shift: the hashes are the high 32-bit halves."""
        v = sig[:self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        v *= self._mult
        return np.add.reduce(v, axis=1)

    @staticmethod
    def _raws(block_hashes: Sequence[str]) -> np.ndarray:
        try:
            joined = bytes.fromhex("".join(block_hashes))
        except (TypeError, ValueError):
            joined = b""
        if len(joined) != HASH_BYTES * len(block_hashes) or any(
                len(h) != 2 * HASH_BYTES for h in block_hashes):
            raise UsageError("block hashes must be 64 hex characters")
        return np.frombuffer(joined, dtype=np.uint8).reshape(-1, HASH_BYTES).copy()

    # -- learning ----------------------------------------------------------------------------
    def add(self, block_hash: str, minhash: Sequence[int] | np.ndarray) -> None:
        """Index one block's signature; a block already indexed only counts as re-seen."""
        try:
            raw = bytes.fromhex(block_hash)
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != HASH_BYTES:
            raise UsageError("block hash must be 64 hex characters")
        sig = self._signatures(minhash, many=False)
        key = self._key_of(raw)
        slot = self._find(raw, key)
        if slot >= 0:
            if self._count - self._stamp.item(slot) >= self.capacity // 2:  # older half
                self._alive[slot] = False
                self._table_remove_one(slot)
                self._size -= 1
                self._insert_one(raw, key, self._sig8[slot].copy(), self._bh[slot].copy())
            return
        h = self._band_hashes_one(sig)
        self._insert_one(raw, key, sig, h.view(np.uint32)[_HIGH::2],
                         (self._offsets64 + (h >> self._shift64)).view(np.int64))
        self.n_updates += 1

    def _insert_one(self, raw: bytes, key: int, sig: np.ndarray, bh: np.ndarray,
                    cells: np.ndarray | None = None) -> None:
        """:meth:`_insert` of one entry (``sig`` and ``bh`` are cast to 8 and 32 bits)."""
        slot = self._count % self.capacity
        stamp, _, _, alive, raws, keys, table = self._views
        if alive[slot]:
            self._table_remove_one(slot)
            self.evictions += 1
            self._size -= 1
        if cells is None:
            cells = self._offsets + (bh >> self._shift)
        raws[slot * HASH_BYTES:(slot + 1) * HASH_BYTES] = raw
        self._sig8[slot], self._bh[slot] = sig, bh
        self._count += 1
        keys[slot], stamp[slot], alive[slot] = key, self._count, True
        self._next[slot] = self._heads.take(cells)
        self._heads[cells] = slot + 1
        self._size += 1
        pos, mask = key >> (64 - self._tbits), self._tmask
        while table[pos] != 0:
            pos = (pos + 1) & mask
        table[pos] = slot + 1
        self._table_used += 1
        if self._table_used > (mask + 1) // 2:
            self._rebuild_table()

    def _table_remove_one(self, slot: int) -> None:
        _, _, _, _, _, keys, table = self._views
        pos, mask = keys[slot] >> (64 - self._tbits), self._tmask
        while table[pos] != slot + 1:
            pos = (pos + 1) & mask
        table[pos] = -1

    def add_many(self, block_hashes: Sequence[str],
                 signatures: Sequence[Sequence[int]] | np.ndarray) -> None:
        """Index an envelope of fingerprints at once; the same state as :meth:`add` one by
        one. Everything is validated before anything changes: a bad row raises
        :class:`~pakit_stream.exceptions.UsageError` and leaves the index as it was."""
        block_hashes = list(block_hashes)
        if not block_hashes:
            return
        raws = self._raws(block_hashes)
        sigs = self._signatures(signatures, many=True)
        if len(sigs) != len(raws):
            raise UsageError(f"{len(raws)} block hashes but {len(sigs)} signatures")
        found = self._find_many(raws)
        keys = raws.view(np.uint64)[:, 0]
        if (found < 0).all() and np.unique(keys).size == len(keys):  # the usual envelope
            self._insert(raws, sigs.astype(np.uint8), self._band_hashes(sigs))
            self.n_updates += len(raws)
            return
        # some blocks are re-seen: decide row by row exactly as add() would, a chunk at a time.
        # Within a chunk of at most capacity // 2 insertions, a block indexed earlier in the
        # same chunk is still there and still in the newer half: it is only re-seen.
        limit, todo, fresh = max(1, self.capacity // 2), [], set()
        count = self._count
        for i in range(len(raws)):
            key, slot = raws[i].tobytes(), found.item(i)
            if key in fresh:
                continue
            if slot >= 0 and self._stamp.item(slot) > count - self.capacity:  # still there
                if count - self._stamp.item(slot) < self.capacity // 2:
                    continue
                todo.append((slot, None))  # the older half: move it to the front
            else:
                todo.append((-1, i))
            fresh.add(key)
            count += 1
            if len(todo) == limit or i == len(raws) - 1:
                self._apply(todo, raws, sigs)
                todo, fresh, count = [], set(), self._count
                found[i + 1:] = self._find_many(raws[i + 1:])
        if todo:
            self._apply(todo, raws, sigs)

    def _apply(self, todo: list[tuple[int, int | None]], raws: np.ndarray,
               sigs: np.ndarray) -> None:
        """Insert, in order, new rows ``(-1, row)`` and moved entries ``(slot, None)``."""
        rows = np.array([i for s, i in todo if s < 0], dtype=np.int64)
        olds = np.array([s for s, _ in todo if s >= 0], dtype=np.int64)
        is_new = np.array([s < 0 for s, _ in todo])
        n = len(todo)
        raw_all = np.empty((n, HASH_BYTES), dtype=np.uint8)
        sig_all = np.empty((n, self.num_perm), dtype=np.uint8)
        bh_all = np.empty((n, self.bands), dtype=np.uint32)
        raw_all[is_new], raw_all[~is_new] = raws[rows], self._raw[olds]
        sig_all[is_new], sig_all[~is_new] = sigs[rows].astype(np.uint8), self._sig8[olds]
        bh_all[is_new], bh_all[~is_new] = self._band_hashes(sigs[rows]), self._bh[olds]
        if olds.size:
            self._alive[olds] = False
            self._table_remove(olds)
            self._size -= olds.size
        self._insert(raw_all, sig_all, bh_all)
        self.n_updates += rows.size

    def _insert(self, raws: np.ndarray, sig8: np.ndarray, bh: np.ndarray,
                stamps: np.ndarray | None = None) -> None:
        """Write entries into the ring in order, evicting what they overwrite, and put each
        at the front of its bucket's chain in every band (vectorised over entries × bands).
        ``stamps`` (increasing) put entries back where a checkpoint found them."""
        if stamps is None:
            stamps = self._count + 1 + np.arange(len(raws), dtype=np.int64)
        # a chunk never laps the ring (no slot written twice) and keeps the sort keys below
        # 2^63 and the temporaries small; chunks in order leave the same state as one pass
        step = min(self.capacity, _CHUNK)
        for start in range(0, len(raws), step):
            end = start + step
            self._insert_chunk(raws[start:end], sig8[start:end], bh[start:end],
                               stamps[start:end])

    def _insert_chunk(self, raws: np.ndarray, sig8: np.ndarray, bh: np.ndarray,
                      stamps: np.ndarray) -> None:
        n, bands = len(raws), self.bands
        slots = (stamps - 1) % self.capacity
        gone = slots[self._alive[slots]]
        if gone.size:
            self._table_remove(gone)
            self.evictions += gone.size
            self._size -= gone.size
        self._raw[slots], self._sig8[slots], self._bh[slots] = raws, sig8, bh
        self._key[slots] = self._keys(raws)
        self._stamp[slots], self._alive[slots] = stamps, True
        # chains: each entry links to the previous entry of its bucket in this chunk, the
        # first one to the bucket's old head; sorting (cell, entry) keeps insertion order
        bits = max(1, (n - 1).bit_length())
        cells = (bh >> self._shift).astype(np.int64) + self._offsets  # (n, bands)
        keys = np.sort(((cells << bits) | np.arange(n, dtype=np.int64)[:, None]).ravel())
        cells, entry = keys >> bits, keys & ((1 << bits) - 1)
        links = (slots[entry] + 1).astype(np.int32)
        same = cells[1:] == cells[:-1]
        value = self._heads[cells]
        value[1:][same] = links[:-1][same]
        self._next.reshape(-1)[slots[entry] * bands + (cells >> self._mbits)] = value
        last = np.ones(cells.size, dtype=bool)
        last[:-1] = ~same
        self._heads[cells[last]] = links[last]
        self._count = int(stamps[-1])
        self._size += n
        self._table_add(slots)

    def learn_record(self, record: Mapping[str, Any]) -> None:
        """Index a fingerprinted record; anything without a ``minhash`` (say, a codec training
        sample) has nothing to index and only counts in ``skipped``."""
        if not isinstance(record, Mapping) or "minhash" not in record:
            self.skipped += 1
            return
        self.add(record["block_hash"], record["minhash"])

    # -- queries -----------------------------------------------------------------------------
    def query(self, minhash: Sequence[int] | np.ndarray, top_k: int = 5,
              exclude: str | None = None, min_jaccard: float | None = None
              ) -> list[dict[str, Any]]:
        """Indexed blocks whose estimated Jaccard with a signature reaches ``min_jaccard``
        (default: the index threshold), best first, at most ``top_k``."""
        sig = self._signatures(minhash, many=False)
        skip = self._slot_of(exclude) if exclude else -1
        h = self._band_hashes_one(sig)
        return self._search(h.view(np.uint32)[_HIGH::2],
                            (self._offsets64 + (h >> self._shift64)).view(np.int64),
                            sig.astype(np.uint8), top_k, min_jaccard, skip)

    def find_similar_blocks(self, block_hash: str, top_k: int = 5,
                            min_jaccard: float | None = None) -> list[dict[str, Any]]:
        """Blocks similar to an indexed block; empty if the block has not been fingerprinted."""
        slot = self._slot_of(block_hash)
        if slot < 0:
            return []
        bh = self._bh[slot].copy()
        return self._search(bh, self._offsets + (bh >> self._shift), self._sig8[slot].copy(),
                            top_k, min_jaccard, slot)

    def predict(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        top_k = int(request.get("top_k", 5))
        min_jaccard = request.get("min_jaccard")
        if "minhash" in request:
            return self.query(request["minhash"], top_k, request.get("block_hash"), min_jaccard)
        return self.find_similar_blocks(request["block_hash"], top_k, min_jaccard)

    def _search(self, bh: np.ndarray, cells: np.ndarray, q8: np.ndarray, top_k: int,
                min_jaccard: float | None, skip: int) -> list[dict[str, Any]]:
        started = time.perf_counter()
        min_j = self.threshold if min_jaccard is None else float(min_jaccard)
        if not 0 < min_j <= 1:
            raise UsageError(f"min_jaccard must be in (0, 1], got {min_jaccard}")
        heads = self._heads[cells]
        found: dict[int, None] = {}
        links, capped, most, chain = 0, False, self.max_candidates, range(self.max_chain)
        stamp, nxt, bhs, alive = self._views[:4]
        shift, bands = self._shift, self.bands
        for b, (p, h) in enumerate(zip(heads.tolist(), bh.tolist())):
            if not p:
                continue
            if len(found) >= most:
                capped = True
                break
            bucket, newer = h >> shift, _NEWEST
            for _ in chain:
                p -= 1
                s, k = stamp[p], p * bands + b
                # a newer entry, or one of another bucket, overwrote the entry linked to:
                # everything further down the chain is older still, and gone
                if s >= newer:
                    break
                hp = bhs[k]
                if hp == h:
                    if alive[p]:
                        found[p] = None
                elif hp >> shift != bucket:
                    break
                links += 1
                newer, p = s, nxt[k]
                if not p:
                    break
            else:
                capped = True  # max_chain links walked and the chain goes on
        found.pop(skip, None)
        if len(found) > most:  # the last band walked may overshoot: verify the first ones
            capped, found = True, dict.fromkeys(list(found)[:most])
        out: list[dict[str, Any]] = []
        if found:
            slots = np.array(list(found), dtype=np.int64)
            agree = np.add.reduce(self._sig8.take(slots, axis=0) == q8, axis=1)
            # Ĵ ≥ min_j, as a count of equal slots (no rounding at the boundary)
            keep = agree >= self.num_perm * (min_j * (1 - _CHANCE) + _CHANCE) - 1e-9
            slots, agree = slots[keep], agree[keep]
            if slots.size > 1:
                best = np.lexsort((-self._stamp.take(slots), -agree))[:top_k]  # ties: newest
                slots, agree = slots[best], agree[best]
            est = np.clip((agree / self.num_perm - _CHANCE) / (1 - _CHANCE), 0.0, 1.0)
            raw = self._raw
            out = [{"block_hash": raw[s].tobytes().hex(), "jaccard": round(j, 4)}
                   for s, j in zip(slots[:top_k].tolist(), est[:top_k].tolist())]
        self.capped_queries += capped
        self.last_query_links, self.last_query_candidates = links, len(found)
        self.last_query_seconds = time.perf_counter() - started
        return out

    # -- checkpoints -------------------------------------------------------------------------
    _ARRAYS = ("_heads", "_next", "_bh", "_sig8", "_raw", "_key", "_stamp", "_alive", "_table",
               "_offsets", "_kmult", "_kmult_py", "_shift64",
               "_offsets64", "_views")

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._ARRAYS:
            del state[name]
        live = np.flatnonzero(self._alive)
        live = live[np.argsort(self._stamp[live], kind="stable")]  # oldest first
        state["_entries"] = {"raw": self._raw[live], "sig8": self._sig8[live],
                             "band_hashes": self._bh[live], "stamps": self._stamp[live]}
        return state

    def __setstate__(self, state):
        state = dict(state)
        entries = state.pop("_entries")
        self.__dict__.update(state)
        self._allocate()
        # each entry back in its own slot: the ring evicts in the same order as before
        self._insert(entries["raw"], entries["sig8"], entries["band_hashes"], entries["stamps"])
        self._count = state["_count"]
