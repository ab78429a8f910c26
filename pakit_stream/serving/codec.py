"""The codec model as the daemon serves it: the trained MLP's weights, run with numpy.

The batch side trains :class:`~pakit_stream.batch.compression.CompressionPredictor` with torch
in a separate process and saves safetensors; the daemon reads the same file with
``safetensors.numpy`` and runs the forward pass itself (standardise, two ReLU layers, softmax),
so torch never enters the event loop. Dropout is off at inference, so the answers are torch's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pakit_stream.exceptions import ModelLoadError
from pakit_stream.modelfile import read_model_file

__all__ = ["ServedCodecModel", "heuristic_codec"]


def heuristic_codec(block_size: int) -> str:
    """The fallback before any model: zstd above 100 kB, else lz4."""
    return "zstd" if block_size > 100_000 else "lz4"


class ServedCodecModel:
    def __init__(self, path: str | Path) -> None:
        meta, w = read_model_file(path, "CompressionPredictor")
        self.version: str | None = meta.get("version")
        self.feature_names: list[str] = meta["feature_names"]
        self.classes: list[str] = meta["classes"]
        try:
            self._mean, self._std = w["0.mean"], w["0.std"]
            self._layers = [(w["1.weight"].T.copy(), w["1.bias"]), (w["4.weight"].T.copy(), w["4.bias"]),
                            (w["7.weight"].T.copy(), w["7.bias"])]
        except KeyError as exc:
            raise ModelLoadError(f"{path}: missing weight {exc}") from exc

    def proba(self, features: Mapping[str, float]) -> np.ndarray:
        x = np.array([features.get(n, 0.0) for n in self.feature_names], dtype=np.float32)
        h = (x - self._mean) / self._std
        for i, (weight, bias) in enumerate(self._layers):
            h = h @ weight + bias
            if i < len(self._layers) - 1:
                np.maximum(h, 0.0, out=h)
        e = np.exp(h - h.max())
        return e / e.sum()

    def predict(self, features: Mapping[str, float]) -> dict[str, Any]:
        p = self.proba(features)
        i = int(p.argmax())
        return {"algorithm": self.classes[i], "confidence": round(float(p[i]), 6),
                "model_version": self.version}
