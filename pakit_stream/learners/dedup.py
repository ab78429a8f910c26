"""Near-duplicate blocks: a bounded, streaming MinHash LSH index (datasketch).

Fingerprints arrive one by one and go straight into a :class:`datasketch.MinHashLSH`. The index
holds at most ``capacity`` blocks; past that the least recently inserted or re-seen block is
evicted. Candidates from the LSH bands are ranked by the estimated Jaccard of their signatures.

Only the signatures are persisted (bounded: ``capacity * 512`` bytes); the band tables are
rebuilt on load, which keeps checkpoints small and independent of datasketch's internals.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> base = rng.integers(0, 2**32, 128)
>>> near = base.copy(); near[:10] = rng.integers(0, 2**32, 10)
>>> dedup = DeduplicationOptimizer(threshold=0.7)
>>> dedup.add("aa" * 32, base); dedup.add("bb" * 32, near); dedup.add("cc" * 32, rng.integers(0, 2**32, 128))
>>> dedup.find_similar_blocks("aa" * 32, top_k=5)
[{'block_hash': 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'jaccard': 0.921875}]
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.events.fingerprint import MINHASH_SEED
from pakit_stream.events.schema import MINHASH_PERM

__all__ = ["DeduplicationOptimizer"]


class DeduplicationOptimizer(OnlineModel):
    default_name = "dedup_optimizer"

    def __init__(self, model_config: ModelConfig | None = None, *, threshold: float = 0.7,
                 capacity: int = 100_000, num_perm: int = MINHASH_PERM) -> None:
        super().__init__(model_config)
        self.threshold, self.capacity, self.num_perm = threshold, capacity, num_perm
        self._init_index()
        self.evictions = 0
        self.skipped = 0
        self.last_query_seconds = 0.0

    def _init_index(self) -> None:
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._sigs: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sigs)

    def __contains__(self, block_hash: str) -> bool:
        return block_hash in self._sigs

    def _minhash(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=MINHASH_SEED, hashvalues=sig, scheme="affine32")

    def add(self, block_hash: str, minhash: Sequence[int] | np.ndarray) -> None:
        """Insert a block's signature; a block already indexed only counts as re-seen."""
        sigs = self._sigs
        if block_hash in sigs:  # content-addressed: same hash, same content
            sigs.move_to_end(block_hash)
            return
        sig = np.asarray(minhash, dtype=np.uint32)
        if sig.shape != (self.num_perm,):
            raise ValueError(f"minhash must have {self.num_perm} values, got {sig.shape}")
        self._lsh.insert(block_hash, self._minhash(sig), check_duplication=False)
        sigs[block_hash] = sig
        if len(sigs) > self.capacity:
            old, _ = sigs.popitem(last=False)
            self._lsh.remove(old)
            self.evictions += 1
        self.n_updates += 1

    def learn_record(self, record: Mapping[str, Any]) -> None:
        """Index a fingerprinted record; anything without a ``minhash`` (say, a codec training
        sample) has nothing to index and only counts in ``skipped``."""
        if not isinstance(record, Mapping) or "minhash" not in record:
            self.skipped += 1
            return
        self.add(record["block_hash"], record["minhash"])

    def query(self, minhash: Sequence[int] | np.ndarray, top_k: int = 5,
              exclude: str | None = None) -> list[dict[str, Any]]:
        """Indexed blocks similar to a signature, best first, with estimated Jaccard."""
        started = time.perf_counter()
        sig = np.asarray(minhash, dtype=np.uint32)
        keys = [k for k in self._lsh.query(self._minhash(sig)) if k != exclude]
        out: list[dict[str, Any]] = []
        if keys:
            jaccard = (np.stack([self._sigs[k] for k in keys]) == sig).mean(axis=1)
            order = np.argsort(-jaccard, kind="stable")[:top_k]
            out = [{"block_hash": keys[i], "jaccard": float(jaccard[i])} for i in order]
        self.last_query_seconds = time.perf_counter() - started
        return out

    def find_similar_blocks(self, block_hash: str, top_k: int = 5) -> list[dict[str, Any]]:
        """Blocks similar to an indexed block; empty if the block has not been fingerprinted."""
        sig = self._sigs.get(block_hash)
        if sig is None:
            return []
        return self.query(sig, top_k, exclude=block_hash)

    def predict(self, request: Mapping[str, Any]) -> list[dict[str, Any]]:
        top_k = int(request.get("top_k", 5))
        if "minhash" in request:
            return self.query(request["minhash"], top_k, exclude=request.get("block_hash"))
        return self.find_similar_blocks(request["block_hash"], top_k)

    def __getstate__(self):
        state = super().__getstate__()
        del state["_lsh"], state["_sigs"]
        keys = list(self._sigs)
        state["_keys"] = keys
        state["_matrix"] = (np.stack(list(self._sigs.values())) if keys
                            else np.zeros((0, self.num_perm), dtype=np.uint32))
        return state

    def __setstate__(self, state):
        state = dict(state)
        keys, matrix = state.pop("_keys"), state.pop("_matrix")
        self.__dict__.update(state)
        self._init_index()
        with self._lsh.insertion_session() as session:
            for key, sig in zip(keys, matrix):
                session.insert(key, self._minhash(sig), check_duplication=False)
                self._sigs[key] = sig
