"""The codec net as the daemon serves it, and the gate that decides whether it may serve.

The batch side trains :class:`~pakit_stream.batch.compression.CompressionPredictor` with torch
in a separate process and saves safetensors; the daemon reads the same file with
``safetensors.numpy`` and runs the forward pass itself (standardise, two ReLU layers, softmax),
so torch never enters the event loop. Dropout is off at inference, so the answers are torch's.

A net serves only as one more expert of the online
:class:`~pakit_stream.learners.codec.CodecCostModel`, and only after :func:`judge_codec_net`
found it cheaper on the held-out window, choosing charged, than both the cost tables and the
best fixed codec; the daemon's retrain, the admin gate and ``pakit-stream evaluate`` all use
that one function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pakit_stream.exceptions import DataError, ModelLoadError
from pakit_stream.learners.codec import CodecCostModel, forward_us, heuristic_codec
from pakit_stream.modelfile import read_model_file

__all__ = ["ServedCodecModel", "heuristic_codec", "judge_codec_net", "relative_cost",
           "forward_us", "CodecSample"]

#: one labelled block: ``({"block_size", "node_id"?, "probe_ratio"?, "features"?},
#: {codec: (compressed bytes, cpu µs)})``
CodecSample = tuple[Mapping[str, Any], Mapping[str, tuple[float, float]]]


def relative_cost(gain: float | None) -> float | None:
    """What the gate's ``gain`` says of a net's cost against the better of the cost tables and
    the best fixed codec (1 − gain, within [0.5, 1]): where it starts among the chooser's
    experts. ``None`` without a verdict."""
    return None if gain is None else min(1.0, max(0.5, 1.0 - gain))


def judge_codec_net(net, train: Sequence[CodecSample], holdout: Sequence[CodecSample], *,
                    cpu_bytes_per_us: float, probe_us: float, entropy_us: float,
                    lookup_us: float, net_us: float, halflife: float = 100.0) -> dict[str, Any]:
    """Cost, choosing charged, of three ways to choose on ``holdout``, over the oracle's:

    * ``table``: a :class:`CodecCostModel` learned on ``train``, then on ``holdout`` as the
      daemon would (each block chosen, then learned);
    * ``fixed``: the one codec cheapest on ``train``;
    * ``net``: ``net.predict`` on each block's features, paying the probe, the entropy and
      the forward pass (``net`` may be ``None``: then only the first two are scored).

    ``gain`` is how much cheaper the net is than the better of the other two, as a share of
    the oracle's cost: positive means the net may serve.
    """
    lam = cpu_bytes_per_us
    codecs = sorted({c for _, costs in train for c in costs})
    if not codecs or not holdout:
        raise DataError("need training and held-out blocks with codec results")

    def cost(costs, codec):
        nbytes, us = costs.get(codec, max(costs.values(), key=lambda v: v[0] + lam * v[1]))
        return nbytes + lam * us

    totals = {c: sum(cost(costs, c) for _, costs in train) for c in codecs}
    fixed_codec = min(totals, key=totals.get)
    oracle = sum(min(cost(costs, c) for c in costs) for _, costs in holdout)
    table = CodecCostModel(cpu_bytes_per_us=lam, probe_us=probe_us, lookup_us=lookup_us,
                           halflife=halflife)
    for x, costs in train:
        table.learn_one(x, costs)
    table_cost = 0.0
    for x, costs in holdout:
        choice = table.choose(int(x["block_size"]), x.get("node_id"), x.get("probe_ratio"))
        table_cost += cost(costs, choice.algorithm) + lam * choice.selection_us
        table.learn_one(x, costs)
    out = {"oracle": oracle, "table": table_cost / oracle, "fixed_codec": fixed_codec,
           "fixed": sum(cost(costs, fixed_codec) for _, costs in holdout) / oracle,
           "blocks": len(holdout)}
    if net is not None:
        per_block = probe_us + entropy_us + net_us
        net_cost = sum(cost(costs, net.predict(x.get("features") or {})["algorithm"])
                       + lam * per_block for x, costs in holdout)
        out["net"] = net_cost / oracle
        out["gain"] = min(out["table"], out["fixed"]) - out["net"]
    return out


class ServedCodecModel:
    def __init__(self, path: str | Path) -> None:
        meta, w = read_model_file(path, "CompressionPredictor")
        self.version: str | None = meta.get("version")
        #: the net's cost over the better of the cost tables and the best fixed codec on the
        #: held-out window its gate judged it on (set by whoever loads it from the registry)
        self.relative_cost: float | None = None
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
