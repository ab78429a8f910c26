"""Periodic retraining jobs: which model, from which telemetry, how often, in which order.

A job reads the labelled events of a collector's SQLite spool (``dataset_path``), trains the
named model and saves it under ``checkpoint_path``. :meth:`TrainingScheduler.run_next_job` runs
the due job with the lowest ``priority`` number (ties: the longest overdue) and schedules it
again one period later. A job is due as soon as it is scheduled.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from pakit_stream.events.schema import BlockStored
from pakit_stream.exceptions import DataError, UsageError
from pakit_stream.features import FeatureExtractor
from pakit_stream.pipeline import best_codec
from pakit_stream.training.config import TrainingConfig
from pakit_stream.training.dataset import TrainingDataset

__all__ = ["TrainingScheduler", "PERIODS"]

log = logging.getLogger(__name__)
PERIODS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}


def train_compression(dataset_path: Path, checkpoint_path: Path, config: TrainingConfig) -> dict:
    from pakit_stream.batch.compression import CompressionPredictor
    from pakit_stream.telemetry import TelemetryCollector
    from pakit_stream.training.trainer import ModelTrainer

    fx, ds = FeatureExtractor(), TrainingDataset()
    with TelemetryCollector(dataset_path) as spool:
        for raw in spool.get_events("block_stored", limit=1_000_000):
            event = msgspec.convert(raw, BlockStored)
            label = best_codec(event) or event.compression_algorithm
            ds.add_sample(fx.extract_features(event), label)
    if len(ds) < 10:
        raise DataError(f"{dataset_path}: {len(ds)} stored-block events, too few to train on")
    train, val, test = ds.time_split(0.7, 0.15)
    model = CompressionPredictor()
    metrics = ModelTrainer(config).train(model, train, val)
    from pakit_stream.training.evaluator import ModelEvaluator

    test_metrics = ModelEvaluator().evaluate(model, test) if len(test) else {}
    model.version = time.strftime("%Y%m%dT%H%M%S")
    checkpoint_path.mkdir(parents=True, exist_ok=True)
    model.save(checkpoint_path / "compression_predictor.safetensors")
    return {**metrics, "test_accuracy": test_metrics.get("accuracy"), "version": model.version}


def train_prefetch(dataset_path: Path, checkpoint_path: Path, config: TrainingConfig) -> dict:
    from pakit_stream.batch.prefetch import PrefetchEngine
    from pakit_stream.telemetry import TelemetryCollector

    with TelemetryCollector(dataset_path) as spool:
        events = spool.get_events("block_accessed", limit=5_000_000)
    by_node: dict[str, list[str]] = {}
    for e in events:
        by_node.setdefault(e["node_id"], []).append(e["block_hash"])
    model = PrefetchEngine()
    metrics = model.train(list(by_node.values()), config)
    model.version = time.strftime("%Y%m%dT%H%M%S")
    checkpoint_path.mkdir(parents=True, exist_ok=True)
    model.save(checkpoint_path / "prefetch_engine.safetensors")
    return {**metrics, "version": model.version}


TRAINERS: dict[str, Callable[[Path, Path, TrainingConfig], dict]] = {
    "compression_predictor": train_compression,
    "prefetch_engine": train_prefetch,
}


class TrainingScheduler:
    def __init__(self, training_config: TrainingConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.training_config = training_config or TrainingConfig(num_epochs=30)
        self.clock = clock
        self._queue: list[tuple[float, int, int, dict[str, Any]]] = []
        self._ids = itertools.count()

    def schedule_job(self, model_name: str, dataset_path: str | Path,
                     checkpoint_path: str | Path, schedule: str = "daily",
                     priority: int = 1) -> dict[str, Any]:
        if model_name not in TRAINERS:
            raise UsageError(f"unknown model {model_name!r}; one of {sorted(TRAINERS)}")
        if schedule not in PERIODS:
            raise UsageError(f"schedule must be one of {sorted(PERIODS)}")
        job = {"model_name": model_name, "dataset_path": Path(dataset_path),
               "checkpoint_path": Path(checkpoint_path), "schedule": schedule,
               "priority": priority, "next_run": self.clock(), "runs": 0}
        self._push(job)
        return job

    def _push(self, job: dict[str, Any]) -> None:
        heapq.heappush(self._queue, (job["next_run"], job["priority"], next(self._ids), job))

    def pending(self) -> list[dict[str, Any]]:
        return [entry[-1] for entry in sorted(self._queue)]

    def run_next_job(self) -> dict[str, Any] | None:
        """Run the most urgent due job; ``None`` when none is due. A failed job is reported
        with ``status: failed`` and its error, and rescheduled like a successful one."""
        now = self.clock()
        due = [e for e in self._queue if e[0] <= now]
        if not due:
            return None
        entry = min(due, key=lambda e: (e[1], e[0], e[2]))
        self._queue.remove(entry)
        heapq.heapify(self._queue)
        job = entry[-1]
        started = time.perf_counter()
        try:
            metrics = TRAINERS[job["model_name"]](job["dataset_path"], job["checkpoint_path"],
                                                  self.training_config)
            status, error = "ok", None
        except Exception as exc:
            log.exception("training job %s failed", job["model_name"])
            metrics, status, error = {}, "failed", f"{type(exc).__name__}: {exc}"
        job["runs"] += 1
        job["next_run"] = now + PERIODS[job["schedule"]]
        self._push(job)
        return {"model_name": job["model_name"], "status": status, "error": error,
                "metrics": metrics, "seconds": time.perf_counter() - started,
                "next_run": job["next_run"]}
