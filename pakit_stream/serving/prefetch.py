"""The prefetch step net as the daemon serves it: the trained GRU's weights, run with numpy.

Same file as :class:`~pakit_stream.batch.prefetch.PrefetchEngine` saves, trained on the steps
(chunk-index deltas) of each (node, object) stream; the forward pass is PyTorch's GRU (gates r,
z, n in that order) written out, so torch never enters the event loop. It is one source of the
prefetch learner (:class:`~pakit_stream.learners.prefetch.Prefetcher`), which ranks its picks
with the stride and successor proposals by how often each came true.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pakit_stream.exceptions import ModelLoadError
from pakit_stream.modelfile import read_model_file

__all__ = ["ServedPrefetchModel"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class ServedPrefetchModel:
    def __init__(self, path: str | Path) -> None:
        meta, w = read_model_file(path, "PrefetchEngine")
        self.version = meta.get("version")
        self.vocab: list[str] = meta["vocab"]
        try:  # the daemon's net names steps; a net over block ids (older versions) cannot serve
            [int(step) for step in self.vocab[1:]]
        except (TypeError, ValueError):
            raise ModelLoadError(f"{path}: its vocabulary is not chunk-index steps (a model "
                                 "over block ids, from an older version?)") from None
        self.index = {b: i for i, b in enumerate(self.vocab) if i}
        self.context_len = int(meta["context_len"])
        try:
            self._embed = w["embed.weight"]
            self._w_ih, self._w_hh = w["gru.weight_ih_l0"].T.copy(), w["gru.weight_hh_l0"].T.copy()
            self._b_ih, self._b_hh = w["gru.bias_ih_l0"], w["gru.bias_hh_l0"]
            self._w_out, self._b_out = w["out.weight"].T.copy(), w["out.bias"]
        except KeyError as exc:
            raise ModelLoadError(f"{path}: missing weight {exc}") from exc
        self.hidden = self._w_hh.shape[0]

    def knows(self, block: str) -> bool:
        return block in self.index

    def scores(self, recent: Sequence[str]) -> np.ndarray:
        ids = [self.index.get(b, 0) for b in recent[-self.context_len:]]
        ids = [0] * (self.context_len - len(ids)) + ids
        h = np.zeros(self.hidden, dtype=np.float32)
        H = self.hidden
        for i in ids:
            gi = self._embed[i] @ self._w_ih + self._b_ih
            gh = h @ self._w_hh + self._b_hh
            r = _sigmoid(gi[:H] + gh[:H])
            z = _sigmoid(gi[H:2 * H] + gh[H:2 * H])
            n = np.tanh(gi[2 * H:] + r * gh[2 * H:])
            h = (1 - z) * n + z * h
        return h @ self._w_out + self._b_out

    def predict(self, recent: Sequence[str], k: int = 5) -> list[str]:
        s = self.scores(recent)
        s[0] = -np.inf  # never "some other block"
        k = min(k, len(self.vocab) - 1)
        top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        return [self.vocab[i] for i in top[np.argsort(-s[top])]]

