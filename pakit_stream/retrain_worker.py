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
    from pakit_stream.specs import spec_of
    from pakit_stream.training import TrainingConfig

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    config = TrainingConfig(num_epochs=job["epochs"], early_stopping_patience=3,
                            batch_size=256, learning_rate=3e-3, num_threads=job["threads"],
                            seed=job.get("seed", 0))
    store = ModelRegistry(job["store"])
    spec = spec_of(job["name"])
    train, holdout = spec.decode(job["train"]), spec.decode(job["holdout"])
    model, factory, metrics, samples = spec.fit(train, job, config)

    def score(candidate) -> float:
        # the gate loads each version with torch; what serves is the numpy model, so judge
        # exactly that: same weights, the daemon's forward pass and its cost
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            candidate.save(Path(tmp) / "m.safetensors")
            served = spec.file_for(Path(tmp) / "m.safetensors")
        value, details = spec.judge(served, train, holdout, job["params"])
        metrics.setdefault("gate", details)  # the first judged is the candidate
        return value

    version = store.register(job["name"], model, metrics, window=job["window"])
    gate = store.gate(job["name"], version, factory, score, min_gain=job["min_gain"],
                      floor=spec.floor(train, holdout, job["params"]),
                      canary=job.get("canary", False))
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
