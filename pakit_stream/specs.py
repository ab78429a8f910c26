"""One spec per batch model: everything the retrainer, the gates, serving, replication and
the canary need to know of a model, in one place.

A spec says where the model's recent window lives in the :class:`~pakit_stream.pipeline.Pipeline`
and how it splits into training and held-out data, how the training subprocess fits a
candidate (with torch, imported there only), how the gate scores a served (numpy) version and
what it must beat, which pipeline attribute the served version is swapped into, and how a
canary's two arms are compared on one event. Code that handles batch models iterates over
:data:`SPECS`; none of it branches on a model's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pakit_stream.learners.prefetch import judge_net
from pakit_stream.privacy import k_anonymous
from pakit_stream.serving.codec import (ServedCodecModel, forward_us, judge_codec_net,
                                       relative_cost)
from pakit_stream.serving.prefetch import ServedPrefetchModel

__all__ = ["ModelSpec", "CodecSpec", "PrefetchSpec", "SPECS", "spec_of", "CODEC_MODEL",
           "PREFETCH_MODEL"]

CODEC_MODEL = "compression_predictor"
PREFETCH_MODEL = "prefetch_engine"


class ModelSpec:
    """What is particular to one batch model (subclasses fill it in)."""

    #: its name in the registry, the models topic and the metrics
    name: str
    #: the :class:`~pakit_stream.pipeline.Pipeline` attribute the served version goes into
    slot: str
    #: the class that serves a model file with numpy
    served: type

    # the window ----------------------------------------------------------------------------
    def window(self, pipeline) -> Sequence:
        """The recent samples the next candidate trains and is judged on."""
        raise NotImplementedError

    def pending(self, pipeline) -> tuple[int, bool]:
        """``(new samples since the last retrain, drift detected)``."""
        raise NotImplementedError

    def reset(self, pipeline) -> None:
        """Forget the pending count and drift once a retrain has taken the window."""
        raise NotImplementedError

    def split(self, window: Sequence, keep: float, settings) -> tuple[list, list, int]:
        """``(train, holdout, suppressed)``: the older ``keep`` share trains, the rest is held
        out; ``suppressed`` samples were kept out (privacy)."""
        window = list(window)
        cut = int(len(window) * keep)
        return window[:cut], window[cut:], 0

    # the gate ------------------------------------------------------------------------------
    def params(self, settings) -> dict[str, Any]:
        """How the gate builds its judge: the same way the daemon builds its learner."""
        raise NotImplementedError

    def judge(self, model, train: Sequence, holdout: Sequence,
              params: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
        """``(score, details)`` of a served version on the held-out data (higher is better)."""
        raise NotImplementedError

    def floor(self, train: Sequence, holdout: Sequence, params: Mapping[str, Any]) -> float:
        """What a candidate's score must exceed even when nothing serves yet."""
        raise NotImplementedError

    # training (in the retrain subprocess) --------------------------------------------------
    def decode(self, samples: Sequence) -> list:
        """Samples as they come back from the job's JSON."""
        raise NotImplementedError

    def fit(self, train: list, job: Mapping[str, Any], config):
        """``(model, factory, metrics, samples)``: a candidate trained with torch."""
        raise NotImplementedError

    # serving -------------------------------------------------------------------------------
    def load(self, path: str | Path, metadata: Mapping[str, Any], pipeline=None):
        """The served model of a verified file (``metadata``: the registry's record)."""
        return self.served(path)

    def on_accepted(self, metrics, result: Mapping[str, Any], settings=None) -> None:
        """Export what the gate found when a version is accepted (nothing that is a raw
        figure of a few nodes' data when ``settings.dp_epsilon`` is set)."""

    def file_for(self, path: str | Path):
        """The served model of a file, without the registry (the gates' loader)."""
        return self.served(path)


class CodecSpec(ModelSpec):
    """The codec net: one more expert of the online codec chooser."""

    name, slot, served = CODEC_MODEL, "codec_model", ServedCodecModel

    def window(self, pipeline):
        return pipeline.codec_window

    def pending(self, pipeline):
        return pipeline.codec_new, pipeline.codec_drift

    def reset(self, pipeline):
        pipeline.codec_new, pipeline.codec_drift = 0, False

    def params(self, settings):
        s = settings
        return {"cpu_bytes_per_us": s.codec_cpu_bytes_per_us, "probe_us": s.codec_probe_us,
                "entropy_us": s.codec_entropy_us, "lookup_us": s.codec_lookup_us,
                "halflife": s.codec_halflife}

    def judge(self, model, train, holdout, params):
        # a node pays the probe, the entropy and this net's forward pass for each block
        net_us = forward_us(model, holdout[0][0].get("features") or {})
        verdict = judge_codec_net(model, train, holdout, net_us=net_us, **params)
        return verdict["gain"], verdict

    def floor(self, train, holdout, params):
        return 0.0  # cheaper than the cost tables and the best fixed codec, or it does not serve

    def decode(self, samples):
        return [(x, {c: tuple(v) for c, v in costs.items()}) for x, costs in samples]

    def fit(self, train, job, config):
        from pakit_stream.batch.compression import CompressionPredictor
        from pakit_stream.training import ModelTrainer, TrainingDataset

        lam = job["params"]["cpu_bytes_per_us"]
        data = TrainingDataset([(x["features"], {c: b + lam * us for c, (b, us) in costs.items()})
                                for x, costs in train])
        fit, val, _ = data.time_split(0.85, 0.15)
        model = CompressionPredictor()
        metrics = ModelTrainer(config).train(model, fit, val)
        return model, CompressionPredictor, metrics, len(fit)

    def load(self, path, metadata, pipeline=None):
        model = self.served(path)
        gate = metadata.get("gate") or {}  # the gate's evidence: how much cheaper it chose
        model.relative_cost = relative_cost(gate.get("candidate_score"))
        if pipeline is not None:
            model.ask_us = pipeline.codec_ask_us(model)
        return model

    @staticmethod
    def arm_quality(model, x: Mapping[str, Any], spent: Mapping[str, float], lam: float,
                    fallback: str) -> float:
        """A canary arm's quality on one labelled block: the cheapest codec's cost over the
        cost of the codec this net picks, its forward pass charged (1 is the oracle)."""
        features = x.get("features")
        codec = model.predict(features)["algorithm"] if features else fallback
        chosen = spent.get(codec, max(spent.values()))
        return min(spent.values()) / max(chosen + lam * getattr(model, "ask_us", 0.0), 1e-9)


class PrefetchSpec(ModelSpec):
    """The prefetch step net: one source of the online prefetch learner."""

    name, slot, served = PREFETCH_MODEL, "prefetch_model", ServedPrefetchModel

    def window(self, pipeline):
        return pipeline.access_window

    def pending(self, pipeline):
        return pipeline.prefetch_new, False

    def reset(self, pipeline):
        pipeline.prefetch_new = 0

    def split(self, window, keep, settings):
        reads, suppressed = list(window), 0  # (node, block, object, index, count)
        if settings.k_anonymity > 1:  # blocks fewer than k nodes read never train
            reads, report = k_anonymous(reads, individual=lambda r: r[0], quasi=lambda r: r[1],
                                        k=settings.k_anonymity)
            suppressed = report.suppressed
        cut = int(len(reads) * keep)
        return reads[:cut], reads[cut:], suppressed

    def params(self, settings):
        s = settings
        return {"min_confidence": s.prefetch_min_confidence, "horizon": s.prefetch_horizon,
                "successor_capacity": s.successor_capacity,
                "score_every": s.prefetch_score_every}

    def judge(self, model, train, holdout, params):
        score = judge_net(model, list(train), holdout, **params)
        return score, {"hit_ratio_at_5": score}

    def floor(self, train, holdout, params):
        return judge_net(None, list(train), holdout, **params)  # the learner without a net

    def decode(self, samples):
        return [tuple(r) for r in samples]

    def fit(self, train, job, config):
        from functools import partial

        from pakit_stream.batch.prefetch import PrefetchEngine
        from pakit_stream.learners.prefetch import delta_sequences

        factory = partial(PrefetchEngine, max_vocab_size=job["max_vocab"])
        model = factory()
        metrics = model.train(delta_sequences((r[0], r[2], r[3]) for r in train), config)
        return model, factory, metrics, int(metrics["samples"])

    def on_accepted(self, metrics, result, settings=None):
        # the hit ratio on a held-out window of a few nodes' reads: with differential privacy
        # on, it is not exported at all (its sensitivity depends on reads the gate scored)
        if settings is None or settings.dp_epsilon <= 0:
            metrics.prefetch_holdout.set(result["candidate_score"])


#: every batch model, by name
SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (CodecSpec(), PrefetchSpec())}


def spec_of(name: str) -> ModelSpec:
    """The spec of a model name; :class:`~pakit_stream.exceptions.ModelLoadError` for any
    other name (a record on the models topic names it, so it is input, not a bug)."""
    from pakit_stream.exceptions import ModelLoadError

    try:
        return SPECS[name]
    except KeyError:
        raise ModelLoadError(f"unknown model {name!r}; one of {', '.join(SPECS)}") from None
