"""Labelled samples for the batch models: ``(features, label)`` pairs, split without leakage.

>>> ds = TrainingDataset()
>>> for i in range(40):
...     ds.add_sample({"size_log2": float(i % 20)}, "zstd" if i % 4 else "lz4")
>>> train, val, test = ds.split(train_ratio=0.7, val_ratio=0.15, test_ratio=0.15, seed=1)
>>> len(train) + len(val) + len(test), sorted(set(test.labels))
(40, ['lz4', 'zstd'])
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pakit_stream.exceptions import DataError, UsageError

__all__ = ["TrainingDataset"]


class TrainingDataset:
    """An ordered list of ``(features: dict[str, float], label)`` samples."""

    def __init__(self, samples: Sequence[tuple[Mapping[str, float], Any]] | None = None) -> None:
        self.samples: list[tuple[dict[str, float], Any]] = [
            (dict(f), label) for f, label in (samples or [])]

    def k_anonymous(self, quasi_identifiers: Sequence[str], k: int,
                    individual: str | None = None):
        """The samples whose values of ``quasi_identifiers`` are shared by at least ``k``
        individuals (the feature ``individual``; each sample is its own without it), as a new
        dataset, with a :class:`~pakit_stream.privacy.KAnonymityReport` of what was dropped.

        >>> ds = TrainingDataset([({"size": 1, "node": 1}, "a"), ({"size": 1, "node": 2}, "a"),
        ...                       ({"size": 9, "node": 1}, "b")])
        >>> kept, report = ds.k_anonymous(["size"], k=2, individual="node")
        >>> len(kept), report.suppressed
        (2, 1)
        """
        from pakit_stream.privacy import k_anonymous

        numbered = list(enumerate(self.samples))
        kept, report = k_anonymous(
            numbered, individual=(lambda r: r[0]) if individual is None
            else (lambda r: r[1][0].get(individual)),
            quasi=lambda r: tuple(r[1][0].get(q) for q in quasi_identifiers), k=k)
        return TrainingDataset([s for _, s in kept]), report

    def add_sample(self, features: Mapping[str, float], label: Any) -> None:
        self.samples.append(({k: float(v) for k, v in features.items()}, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[tuple[dict[str, float], Any]]:
        return iter(self.samples)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return TrainingDataset(self.samples[index])
        return self.samples[index]

    @property
    def labels(self) -> list[Any]:
        return [label for _, label in self.samples]

    def split(self, train_ratio: float = 0.7, val_ratio: float = 0.15, test_ratio: float = 0.15,
              seed: int = 0, stratify: bool = True
              ) -> tuple[TrainingDataset, TrainingDataset, TrainingDataset]:
        """Disjoint train / validation / test sets; stratified so every class keeps its share
        (each class's samples are shuffled and cut by the ratios). Samples whose label is a
        mapping of costs are stratified by their cheapest class."""
        total = train_ratio + val_ratio + test_ratio
        if total <= 0 or min(train_ratio, val_ratio, test_ratio) < 0:
            raise UsageError("ratios must be non-negative and not all zero")
        rng = random.Random(seed)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, (_, label) in enumerate(self.samples):
            if isinstance(label, Mapping):
                label = min(label, key=label.get)
            groups[label if stratify else None].append(i)
        parts: tuple[list[int], list[int], list[int]] = ([], [], [])
        for indices in groups.values():
            rng.shuffle(indices)
            n_train = round(len(indices) * train_ratio / total)
            n_val = round(len(indices) * val_ratio / total)
            parts[0].extend(indices[:n_train])
            parts[1].extend(indices[n_train:n_train + n_val])
            parts[2].extend(indices[n_train + n_val:])
        return tuple(TrainingDataset([self.samples[i] for i in sorted(p)]) for p in parts)

    def time_split(self, train_ratio: float = 0.7, val_ratio: float = 0.15
                   ) -> tuple[TrainingDataset, TrainingDataset, TrainingDataset]:
        """Split in arrival order (older → train, newer → test): for streams that drift."""
        n = len(self.samples)
        a, b = int(n * train_ratio), int(n * (train_ratio + val_ratio))
        return self[:a], self[a:b], self[b:]

    def folds(self, k: int, seed: int = 0) -> list[tuple[TrainingDataset, TrainingDataset]]:
        """Stratified k-fold: ``k`` (train, held-out) pairs, each sample held out once."""
        if not 2 <= k <= len(self.samples):
            raise UsageError(f"k_folds must be in [2, {len(self.samples)}]")
        rng = random.Random(seed)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, (_, label) in enumerate(self.samples):
            groups[label].append(i)
        fold_of = {}
        offset = 0
        for indices in groups.values():
            rng.shuffle(indices)
            for j, i in enumerate(indices):
                fold_of[i] = (j + offset) % k
            offset += len(indices)
        out = []
        for f in range(k):
            held = [s for i, s in enumerate(self.samples) if fold_of[i] == f]
            rest = [s for i, s in enumerate(self.samples) if fold_of[i] != f]
            out.append((TrainingDataset(rest), TrainingDataset(held)))
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": "pakit-stream/dataset/1",
                                          "samples": [[f, label] for f, label in self.samples]}))

    @classmethod
    def load(cls, path: str | Path) -> TrainingDataset:
        data = json.loads(Path(path).read_text())
        if data.get("format") != "pakit-stream/dataset/1":
            raise DataError(f"{path}: not a pakit-stream dataset")
        return cls([(f, label) for f, label in data["samples"]])
