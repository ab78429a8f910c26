"""Retraining inside the daemon: when, on what, and the swap.

A leader-only timer asks :meth:`Retrainer.due` whether to retrain each batch model: on schedule
(``retrain_interval_s``), after ``retrain_min_new`` new examples (labelled blocks for the codec
model, reads for the prefetch model), or, for the codec model, when River's ADWIN detects drift
in the codec chooser's online excess cost. The training itself runs in a subprocess
(:mod:`pakit_stream.retrain_worker`) that gets the recent window: the older part to train on,
the newest ``holdout_fraction`` as the gate's held-out data. A run that fails or exceeds
``retrain_timeout_s`` is killed and counted; the serving model stays. An accepted version is
loaded (numpy, no torch) and swapped in with one assignment, so a hint sees the old model or the
new one, never a mix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from pakit_stream.exceptions import ModelLoadError
from pakit_stream.learners.prefetch import judge_net
from pakit_stream.pipeline import Pipeline
from pakit_stream.registry import ModelRegistry
from pakit_stream.serving.codec import (ServedCodecModel, forward_us, judge_codec_net,
                                       relative_cost)
from pakit_stream.privacy import k_anonymous
from pakit_stream.serving.prefetch import ServedPrefetchModel
from pakit_stream.settings import Settings

__all__ = ["Retrainer", "CODEC_MODEL", "PREFETCH_MODEL", "MODELS"]

log = logging.getLogger(__name__)
CODEC_MODEL = "compression_predictor"
PREFETCH_MODEL = "prefetch_engine"
#: model name -> (served class, pipeline attribute it is swapped into)
MODELS = {CODEC_MODEL: (ServedCodecModel, "codec_model"),
          PREFETCH_MODEL: (ServedPrefetchModel, "prefetch_model")}


async def _write_job(job: dict[str, Any], f, chunk: int = 500) -> None:
    """Write the job as JSON a chunk of samples at a time, yielding to the loop between chunks
    (a window of 100k samples, encoded at once, would hold it for a second)."""
    encode = msgspec.json.encode
    rest = {k: v for k, v in job.items() if k not in ("train", "holdout")}
    f.write(encode(rest)[:-1])
    for key in ("train", "holdout"):
        samples = job[key]
        f.write(b',"%s":[' % key.encode())
        for i in range(0, len(samples), chunk):
            if i:
                f.write(b",")
            f.write(encode(samples[i:i + chunk])[1:-1])
            await asyncio.sleep(0)
        f.write(b"]")
    f.write(b"}")


class Retrainer:
    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings, self.pipeline = settings, pipeline
        self.registry = ModelRegistry(settings.data_dir)  # models/<name>/<version>/
        self.metrics = pipeline.metrics
        self.started = time.time()
        self.last_run: dict[str, float] = {}
        self.suppressed = 0  # reads the last k-anonymity check kept out of training
        #: called with a model name whenever this worker starts serving another version
        self.on_serving_change: list = []
        self._lock = asyncio.Lock()

    def load_serving(self, name: str = CODEC_MODEL) -> bool:
        """Swap the registry's serving version in; a bad file is refused and nothing changes."""
        return self._swap(name, self._prepare(name))

    async def load_serving_async(self, name: str = CODEC_MODEL) -> bool:
        """:meth:`load_serving`, with the file's check and load (and, for the codec net, the
        timing of its forward pass) in a thread, so that only the swap runs on the loop."""
        loop = asyncio.get_running_loop()
        return self._swap(name, await loop.run_in_executor(None, self._prepare, name))

    def _prepare(self, name: str):
        """The serving version, verified and loaded; ``None`` if there is none or it is bad."""
        version = self.registry.serving(name)
        if version is None:
            return None
        served_class, _ = MODELS[name]
        try:
            model = served_class(self.registry.verified_file(name, version))
        except ModelLoadError:
            log.exception("serving %s %s refused; keeping the current model", name, version)
            return None
        if name == CODEC_MODEL:  # the gate's evidence: how much cheaper it chose (a share)
            gate = self.registry.metadata(name, version).get("gate") or {}
            model.relative_cost = relative_cost(gate.get("candidate_score"))
            model.ask_us = self.pipeline.codec_ask_us(model)
        return model

    def _swap(self, name: str, model) -> bool:
        if model is None:
            return False
        setattr(self.pipeline, MODELS[name][1], model)  # one assignment: the swap
        self.metrics.serving.labels(model=name).info({"version": model.version})
        return True

    def load_all(self) -> None:
        for name in MODELS:
            self.load_serving(name)

    def due(self, name: str = CODEC_MODEL) -> str | None:
        p, s = self.pipeline, self.settings
        if name == CODEC_MODEL:
            size, new, drifted = len(p.codec_window), p.codec_new, p.codec_drift
        else:
            size, new, drifted = len(p.access_window), p.prefetch_new, False
        if size < s.retrain_min_samples:
            return None
        if drifted:
            return "drift"
        if new >= s.retrain_min_new:
            return "volume"
        if time.time() - self.last_run.get(name, self.started) >= s.retrain_interval_s:
            return "schedule"
        return None

    async def retrain(self, reason: str, name: str = CODEC_MODEL) -> dict[str, Any]:
        """Run one retraining; returns its outcome (never raises)."""
        if self._lock.locked():
            return {"outcome": "skipped", "reason": "a retrain is already running"}
        async with self._lock:
            return await self._retrain(reason, name)

    def split(self, name: str) -> tuple[list, list, int]:
        """``(train, holdout, window size)``: the newest ``retrain_holdout_fraction`` of the
        window is held out."""
        p, keep = self.pipeline, 1 - self.settings.retrain_holdout_fraction
        if name == CODEC_MODEL:
            window = list(p.codec_window)
            cut = int(len(window) * keep)
            return window[:cut], window[cut:], len(window)
        reads = list(p.access_window)  # (node, block, object, index, count)
        if self.settings.k_anonymity > 1:  # blocks fewer than k nodes read never train
            reads, report = k_anonymous(reads, individual=lambda r: r[0], quasi=lambda r: r[1],
                                        k=self.settings.k_anonymity)
            self.suppressed = report.suppressed
        cut = int(len(reads) * keep)
        return reads[:cut], reads[cut:], len(p.access_window)

    async def _retrain(self, reason: str, name: str) -> dict[str, Any]:
        p, s = self.pipeline, self.settings
        train, holdout, size = self.split(name)
        if name == CODEC_MODEL:
            p.codec_new, p.codec_drift = 0, False
        else:
            p.prefetch_new = 0
        job = {"name": name, "store": str(self.registry.root), "train": train,
               "holdout": holdout, "threads": s.retrain_threads, "epochs": 30,
               "codec": self.codec_prices(),
               "min_gain": s.retrain_min_gain, "max_vocab": s.prefetch_max_vocab,
               "prefetch": self.prefetch_params(),
               "window": {"samples": size, "reason": reason, "ended": time.time()}}
        self.last_run[name] = time.time()
        started = time.perf_counter()
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
            await _write_job(job, f)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pakit_stream.retrain_worker", f.name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": str(s.retrain_threads)})
        try:
            out, err = await asyncio.wait_for(proc.communicate(), s.retrain_timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return self._failed(name, started, f"timed out after {s.retrain_timeout_s}s")
        finally:
            Path(f.name).unlink(missing_ok=True)
        if proc.returncode != 0:
            return self._failed(name, started, err.decode(errors="replace")[-500:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.metrics.retrain_samples.labels(model=name).set(result["samples"])
        log.info("retrain of %s (%s): %s", name, reason, result["reason"])
        if result["accepted"]:
            await self.load_serving_async(name)
        return self._judged(name, result, started, loaded=True)

    def _judged(self, name: str, result: dict[str, Any], started: float,
                loaded: bool = False) -> dict[str, Any]:
        """Count a gate's verdict and swap an accepted version in (unless ``loaded``)."""
        m = self.metrics
        outcome = "accepted" if result["accepted"] else "rejected"
        m.retrains.labels(model=name, outcome=outcome).inc()
        m.retrain_seconds.labels(model=name).observe(time.perf_counter() - started)
        if result["accepted"]:
            if not loaded:
                self.load_serving(name)
            self._changed(name)
            if name == PREFETCH_MODEL:
                m.prefetch_holdout.set(result["candidate_score"])
        return {"outcome": outcome, **result}

    def _failed(self, name: str, started: float, why: str) -> dict[str, Any]:
        log.error("retrain of %s failed: %s", name, why)
        self.metrics.retrains.labels(model=name, outcome="failed").inc()
        self.metrics.retrain_seconds.labels(model=name).observe(time.perf_counter() - started)
        return {"outcome": "failed", "reason": why}

    def codec_prices(self) -> dict[str, float]:
        s = self.settings
        return {"cpu_bytes_per_us": s.codec_cpu_bytes_per_us, "probe_us": s.codec_probe_us,
                "entropy_us": s.codec_entropy_us, "lookup_us": s.codec_lookup_us,
                "halflife": s.codec_halflife}

    def prefetch_params(self) -> dict[str, Any]:
        """How the daemon's prefetch learner is built: the gates build theirs the same way."""
        s = self.settings
        return {"min_confidence": s.prefetch_min_confidence, "horizon": s.prefetch_horizon,
                "successor_capacity": s.successor_capacity,
                "score_every": s.prefetch_score_every}

    def served_score(self, name: str, model, holdout, train=()) -> float:
        """The gate's score of a served model: for the codec net, how much cheaper it is
        than the cost tables and the best fixed codec (:func:`judge_codec_net`); for the
        prefetch step net, the hit ratio at 5 of the prefetch learner that serves it
        (:func:`~pakit_stream.learners.prefetch.judge_net`)."""
        if name == PREFETCH_MODEL:
            return judge_net(model, list(train), holdout, **self.prefetch_params())
        prices = self.codec_prices()
        net_us = forward_us(model, holdout[0][0]["features"])
        return judge_codec_net(model, train, holdout, net_us=net_us, **prices)["gain"]

    def gate_candidate(self, name: str, version: str,
                       min_gain: float | None = None) -> dict[str, Any]:
        """Judge a registered candidate (trained anywhere) against the serving version on this
        daemon's held-out window, with the served (numpy) models; promote and swap it in, or
        reject it (it is kept for inspection)."""
        served_class, _ = MODELS[name]
        train, holdout, _ = self.split(name)
        if not holdout or not any(holdout):
            raise ValueError(f"{name}: no recent data to judge a candidate on")

        class Served:  # what the registry's gate loads each version into
            @staticmethod
            def load(path):
                return served_class(path)

        started = time.perf_counter()
        result = self.registry.gate(name, version, Served,
                                    lambda model: self.served_score(name, model, holdout, train),
                                    min_gain=self.settings.retrain_min_gain
                                    if min_gain is None else min_gain,
                                    floor=0.0 if name == CODEC_MODEL else
                                    judge_net(None, train, holdout, **self.prefetch_params()))
        return self._judged(name, result, started)

    def rollback(self, name: str = CODEC_MODEL) -> str:
        version = self.registry.rollback(name)
        if not self.load_serving(name):
            raise ModelLoadError(f"{name} {version} could not be loaded")
        self._changed(name)
        return version

    def _changed(self, name: str) -> None:
        for callback in self.on_serving_change:
            try:
                callback(name)
            except Exception:  # publishing must not undo what was served
                log.exception("could not announce the new serving version of %s", name)

    async def adopt(self, record: bytes) -> str | None:
        """Serve a version another worker published (see :meth:`ModelRegistry.adopt`); returns
        the model name, or None when this worker already served it (its own publication). The
        record is checked, written and loaded in a thread; only the swap runs on the loop."""
        loop = asyncio.get_running_loop()
        name, version = await loop.run_in_executor(None, self.registry.adopt, record)
        served = getattr(self.pipeline, MODELS[name][1])
        if served is not None and served.version == version:
            return None
        if not await self.load_serving_async(name):
            raise ModelLoadError(f"{name}: the adopted version could not be loaded")
        return name
