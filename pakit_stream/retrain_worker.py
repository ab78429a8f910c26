"""One retraining run, in its own interpreter: ``python -m pakit_stream.retrain_worker JOB``.

The daemon writes JOB (JSON: the training samples, the held-out window, the model store, the
thread budget) and starts this module as a subprocess: a fresh process (spawned, never forked
from the daemon), where importing torch cannot disturb the event loop. It trains a candidate,
registers it, puts it through the gate on the held-out window, and prints one JSON line. It
runs at a lower priority (nice 10), so that on a small machine training does not slow the
daemon's hints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def run(job: dict) -> dict:
    import torch

    from pakit_stream.registry import ModelRegistry
    from pakit_stream.training import ModelTrainer, TrainingConfig, TrainingDataset

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    config = TrainingConfig(num_epochs=job["epochs"], early_stopping_patience=3,
                            batch_size=256, learning_rate=3e-3, num_threads=job["threads"],
                            seed=job.get("seed", 0))
    store = ModelRegistry(job["store"])
    if job["name"] == "compression_predictor":
        from pakit_stream.batch.compression import CompressionPredictor as factory
        from pakit_stream.serving.codec import ServedCodecModel, forward_us, judge_codec_net

        prices = job["codec"]
        lam = prices["cpu_bytes_per_us"]
        window = [(x, {c: tuple(v) for c, v in costs.items()}) for x, costs in job["train"]]
        holdout_blocks = [(x, {c: tuple(v) for c, v in costs.items()})
                          for x, costs in job["holdout"]]
        data = TrainingDataset([(x["features"], {c: b + lam * us for c, (b, us) in costs.items()})
                                for x, costs in window])
        train, val, _ = data.time_split(0.85, 0.15)
        model = factory()
        metrics = ModelTrainer(config).train(model, train, val)
        samples = len(train)

        def score(candidate) -> float:
            # the gate loads the candidate with torch; what serves is the numpy model, so
            # judge exactly that: same weights, the daemon's forward pass and its cost
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                candidate.save(Path(tmp) / "m.safetensors")
                served = ServedCodecModel(Path(tmp) / "m.safetensors")
            net_us = forward_us(served, holdout_blocks[0][0]["features"])
            verdict = judge_codec_net(served, window, holdout_blocks, cpu_bytes_per_us=lam,
                                      probe_us=prices["probe_us"],
                                      entropy_us=prices["entropy_us"],
                                      lookup_us=prices["lookup_us"], net_us=net_us,
                                      halflife=prices["halflife"])
            metrics.setdefault("gate_costs", verdict)  # the first judged is the candidate
            return verdict["gain"]
        floor = 0.0  # beat the cost tables and the best fixed codec, or do not serve
    elif job["name"] == "prefetch_engine":
        from functools import partial

        from pakit_stream.batch.prefetch import PrefetchEngine
        from pakit_stream.learners.prefetch import delta_sequences, judge_net
        from pakit_stream.serving.prefetch import ServedPrefetchModel

        train = [tuple(r) for r in job["train"]]
        holdout = [tuple(r) for r in job["holdout"]]
        factory = partial(PrefetchEngine, max_vocab_size=job["max_vocab"])
        model = factory()
        metrics = model.train(delta_sequences((r[0], r[2], r[3]) for r in train), config)
        samples = int(metrics["samples"])

        def score(candidate) -> float:
            # judged as served: the numpy net inside the prefetch learner the daemon runs
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                candidate.save(Path(tmp) / "m.safetensors")
                served = ServedPrefetchModel(Path(tmp) / "m.safetensors")
            return judge_net(served, train, holdout, **job["prefetch"])
        floor = judge_net(None, train, holdout, **job["prefetch"])  # beat the learner without it
    else:
        raise SystemExit(f"unknown model {job['name']!r}")
    version = store.register(job["name"], model, metrics, window=job["window"])
    gate = store.gate(job["name"], version, factory, score, min_gain=job["min_gain"],
                      floor=floor)
    return {**gate, "version": version, "samples": samples,
            "seconds": time.perf_counter() - started, "train_metrics": metrics}


def main() -> int:
    if hasattr(os, "nice"):  # training yields the cores to the daemon that serves hints
        os.nice(10)
    job = json.loads(Path(sys.argv[1]).read_text())
    result = run(job)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
