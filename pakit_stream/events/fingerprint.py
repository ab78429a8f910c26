"""The one MinHash every node computes, so that fingerprints from any two nodes compare.

A block's content is cut into overlapping 8-byte shingles; each shingle is hashed to 32 bits,
and a content-defined one-in-eight sample of the hashes (those whose low three bits are zero,
so the sample survives insertions and shifts) goes into a datasketch MinHash of 128
permutations with a fixed seed. Only the 128 minimum hash values leave the node: they tell how
similar two blocks are, never what they contain.

>>> a = bytes(range(256)) * 64
>>> b = a[:8000] + b"an edit in the middle" + a[8000:]
>>> sig_a, sig_b = block_minhash(a), block_minhash(b)
>>> len(sig_a), estimated_jaccard(sig_a, sig_b) > 0.8
(128, True)
>>> estimated_jaccard(sig_a, block_minhash(b"entirely different" * 500)) < 0.1
True
"""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

from pakit_stream.events.schema import MINHASH_PERM

__all__ = ["block_minhash", "estimated_jaccard", "MINHASH_SEED", "SHINGLE_BYTES"]

MINHASH_SEED = 0x5EED
SHINGLE_BYTES = 8
_SAMPLE_MASK = 0x7  # keep hashes whose low bits are zero: a 1-in-8 content-defined sample
_MIN_SAMPLED = 64  # below this many sampled shingles, use them all (small blocks)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TEMPLATE = MinHash(num_perm=MINHASH_PERM, seed=MINHASH_SEED, hashfunc=int)


def _shingle_hashes(data: bytes) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < SHINGLE_BYTES:
        buf = np.pad(buf, (0, SHINGLE_BYTES - buf.size))
    windows = np.lib.stride_tricks.sliding_window_view(buf, SHINGLE_BYTES)
    words = windows.astype(np.uint64) @ (np.uint64(1) << (np.arange(8, dtype=np.uint64) * np.uint64(8)))
    with np.errstate(over="ignore"):
        mixed = (words ^ (words >> np.uint64(29))) * _GOLDEN
    return (mixed >> np.uint64(32)).astype(np.uint32)


def block_minhash(data: bytes) -> list[int]:
    """The 128 32-bit MinHash values of a block's content, as sent in ``block_fingerprint``."""
    hashes = np.unique(_shingle_hashes(data))
    sampled = hashes[(hashes & _SAMPLE_MASK) == 0]
    if sampled.size < _MIN_SAMPLED:
        sampled = hashes
    m = _TEMPLATE.copy()
    m.update_batch(sampled.tolist())
    return m.hashvalues.tolist()


def estimated_jaccard(a, b) -> float:
    """Fraction of equal MinHash slots: an unbiased estimate of the two blocks' Jaccard."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))
