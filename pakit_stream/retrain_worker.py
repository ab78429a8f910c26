"""One retraining run, in its own interpreter: ``python -m pakit_stream.retrain_worker JOB``.

The daemon writes JOB (JSON: the training samples, the held-out window, the model store, the
thread budget) and starts this module as a subprocess: a fresh process (spawned, never forked
from the daemon), where importing torch cannot disturb the event loop. It trains a candidate,
registers it, puts it through the gate on the held-out window, and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def run(job: dict) -> dict:
    import torch

    from pakit_stream.registry import ModelRegistry
    from pakit_stream.training import ModelEvaluator, ModelTrainer, TrainingConfig, TrainingDataset
    from pakit_stream.training.evaluator import hit_ratio_at

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    config = TrainingConfig(num_epochs=job["epochs"], early_stopping_patience=3,
                            batch_size=256, learning_rate=3e-3, num_threads=job["threads"],
                            seed=job.get("seed", 0))
    store = ModelRegistry(job["store"])
    if job["name"] == "compression_predictor":
        from pakit_stream.batch.compression import CompressionPredictor as factory

        data = TrainingDataset([(f, label) for f, label in job["train"]])
        holdout = TrainingDataset([(f, label) for f, label in job["holdout"]])
        train, val, _ = data.time_split(0.85, 0.15)
        model = factory()
        metrics = ModelTrainer(config).train(model, train, val)
        samples = len(train)

        def score(candidate) -> float:
            return ModelEvaluator().evaluate(candidate, holdout)["accuracy"]
    elif job["name"] == "prefetch_engine":
        from functools import partial

        from pakit_stream.batch.prefetch import PrefetchEngine

        factory = partial(PrefetchEngine, max_vocab_size=job["max_vocab"])
        model = factory()
        metrics = model.train(job["train"], config)
        samples = int(metrics["samples"])

        def score(candidate) -> float:
            return hit_ratio_at(lambda recent, k: candidate.predict(
                {"recent_accesses": recent, "k": k}), job["holdout"])
    else:
        raise SystemExit(f"unknown model {job['name']!r}")
    version = store.register(job["name"], model, metrics, window=job["window"])
    gate = store.gate(job["name"], version, factory, score, min_gain=job["min_gain"])
    return {**gate, "version": version, "samples": samples,
            "seconds": time.perf_counter() - started, "train_metrics": metrics}


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    result = run(job)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
