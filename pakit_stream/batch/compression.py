"""Which codec to compress a block with: a torch MLP over content-free block features.

Input: the features :meth:`FeatureExtractor.extract_features` gives a ``block_stored`` event
(size, depth, parents, sampled entropy, the 4 KiB lz4 probe — never the codec chosen or the
ratio achieved). Targets come in two kinds:

* **costs** (what the daemon trains on): each sample's label is a mapping ``codec -> cost``
  (bytes + λ · µs, as measured on the block). The net is trained on the *expected cost* of its
  softmax choice, in excess of the block's cheapest codec and scaled to the average block's
  cost, so a mistake weighs what it costs: picking zstd-9 for a 4 KiB block at a high CPU
  price costs more than missing it on a cheap one. Cross-entropy on the cheapest codec's name
  would weigh both the same;
* **a codec name** (the guide's datasets): plain classification, which is the same objective
  with a cost of 1 for every other codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pakit_stream.batch.base import BatchModel
from pakit_stream.exceptions import DataError, UsageError

__all__ = ["CompressionPredictor"]


class _Standardize(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def forward(self, x):
        return (x - self.mean) / self.std


class CompressionPredictor(BatchModel):
    default_name = "compression_predictor"

    def __init__(self, model_config=None, hidden_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__(model_config)
        self.hidden_dim, self.dropout = hidden_dim, dropout
        self.feature_names: list[str] = []
        self.classes: list[str] = []

    def _build(self) -> None:
        d, h, c = len(self.feature_names), self.hidden_dim, len(self.classes)
        self.net = nn.Sequential(_Standardize(d), nn.Linear(d, h), nn.ReLU(), nn.Dropout(self.dropout),
                                 nn.Linear(h, h), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(h, c))

    def prepare(self, train_data, hidden_dim: int | None = None, dropout: float | None = None):
        samples = list(train_data)
        if not samples:
            raise DataError("no training samples")
        self.feature_names = sorted({k for f, _ in samples for k in f})
        self.classes = sorted({str(c) for _, label in samples
                               for c in (label if isinstance(label, Mapping) else (label,))})
        self.hidden_dim = hidden_dim or self.hidden_dim
        self.dropout = self.dropout if dropout is None else dropout
        self._build()
        x = self._matrix([f for f, _ in samples])
        norm = self.net[0]
        norm.mean.copy_(x.mean(0))
        norm.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        return self

    def _matrix(self, features: Sequence[Mapping[str, float]]) -> torch.Tensor:
        names = self.feature_names
        return torch.tensor([[float(f.get(n, 0.0)) for n in names] for f in features],
                            dtype=torch.float32)

    def encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs, and targets: class indices for named labels, or for cost labels a matrix
        of each codec's cost above the block's cheapest, in units of the mean cheapest cost
        (a codec the block was not measured with costs as much as its dearest)."""
        samples = list(data)
        index = {c: i for i, c in enumerate(self.classes)}
        if samples and isinstance(samples[0][1], Mapping):
            rows, keep = [], []
            for f, costs in samples:
                known = {c: float(v) for c, v in costs.items() if c in index}
                if not known:
                    continue
                worst, best = max(known.values()), min(known.values())
                rows.append([known.get(c, worst) - best for c in self.classes])
                keep.append((f, best))
            scale = max(sum(b for _, b in keep) / max(len(keep), 1), 1e-9)
            return (self._matrix([f for f, _ in keep]),
                    torch.tensor(rows, dtype=torch.float32).reshape(-1, len(self.classes)) / scale)
        keep = [(f, index[str(label)]) for f, label in samples if str(label) in index]
        return (self._matrix([f for f, _ in keep]),
                torch.tensor([y for _, y in keep], dtype=torch.long))

    @torch.no_grad()
    def predict_proba(self, features: Sequence[Mapping[str, float]]) -> torch.Tensor:
        if self.net is None:
            raise UsageError("CompressionPredictor has not been trained")
        self.net.eval()
        return torch.softmax(self.net(self._matrix(features).to(self.device)), dim=1).cpu()

    def predict_labels(self, features: Sequence[Mapping[str, float]]) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(features).argmax(1).tolist()]

    def predict(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """``{algorithm, confidence, model_version}`` for one block's features."""
        p = self.predict_proba([features])[0]
        i = int(p.argmax())
        return {"algorithm": self.classes[i], "confidence": round(float(p[i]), 6),
                "model_version": self.version}

    def _describe(self) -> dict[str, Any]:
        return {"feature_names": self.feature_names, "classes": self.classes,
                "hidden_dim": self.hidden_dim, "dropout": self.dropout}

    def _rebuild(self, meta: dict[str, Any]) -> None:
        self.feature_names, self.classes = meta["feature_names"], meta["classes"]
        self.hidden_dim, self.dropout = meta["hidden_dim"], meta["dropout"]
        self._build()
