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
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from pakit_stream.canary import Canary
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.pipeline import Pipeline
from pakit_stream.registry import ModelRegistry
from pakit_stream.settings import Settings
from pakit_stream.specs import CODEC_MODEL, PREFETCH_MODEL, SPECS, spec_of

__all__ = ["Retrainer", "CODEC_MODEL", "PREFETCH_MODEL", "SPECS"]

log = logging.getLogger(__name__)


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
    """Retraining, gating, canaries and swaps of the batch models (each described by its
    :class:`~pakit_stream.specs.ModelSpec`)."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings, self.pipeline = settings, pipeline
        self.registry = ModelRegistry(  # models/<name>/<version>/
            settings.data_dir, key=settings.model_key.encode() if settings.model_key else None)
        self.metrics = pipeline.metrics
        self.started = time.time()
        self.last_run: dict[str, float] = {}
        self.suppressed = 0  # reads the last k-anonymity check kept out of training
        #: called with ``(model name, role)`` whenever this worker starts serving another
        #: version (role ``"serving"``) or another canary (role ``"canary"``)
        self.on_serving_change: list = []
        self._lock = asyncio.Lock()

    # loading and swapping ------------------------------------------------------------------
    def load_serving(self, name: str = CODEC_MODEL) -> bool:
        """Swap the registry's serving version in; a bad file is refused and nothing changes."""
        return self._swap(name, self._prepare(name, self.registry.serving(name)))

    async def load_serving_async(self, name: str = CODEC_MODEL) -> bool:
        """:meth:`load_serving`, with the file's check and load (and, for the codec net, the
        timing of its forward pass) in a thread, so that only the swap runs on the loop."""
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, self._prepare, name, self.registry.serving(name))
        return self._swap(name, model)

    def _prepare(self, name: str, version: str | None):
        """``version`` of ``name``, verified and loaded; ``None`` if absent or bad."""
        if version is None:
            return None
        try:
            return spec_of(name).load(self.registry.verified_file(name, version),
                                      self.registry.metadata(name, version), self.pipeline)
        except Exception:  # any file that does not load (a KeyError of a header, say) is refused
            log.exception("%s %s refused; keeping the current model", name, version)
            return None

    def _swap(self, name: str, model) -> bool:
        if model is None:
            return False
        setattr(self.pipeline, SPECS[name].slot, model)  # one assignment: the swap
        self.metrics.serving.labels(model=name).info({"version": model.version})
        self._drop_canary(name, model.version)
        return True

    def load_all(self) -> None:
        """Serve what the registry says: the serving versions and the running canaries (whose
        online comparison starts again from nothing)."""
        for name in SPECS:
            self.load_serving(name)
            version = self.registry.canary(name)
            model = self._prepare(name, version)
            if model is not None:
                self._start_canary(name, model)

    # canaries ------------------------------------------------------------------------------
    def _start_canary(self, name: str, model) -> None:
        self.pipeline.canaries[name] = Canary(name, model.version, model,
                                              self.settings.canary_share)
        self.metrics.canary.labels(model=name).info({"version": model.version})
        log.info("%s %s serves %.0f%% of the nodes as a canary", name, model.version,
                 100 * self.settings.canary_share)

    def _drop_canary(self, name: str, promoted: str | None = None) -> None:
        canary = self.pipeline.canaries.pop(name, None)
        if canary is not None:
            self.metrics.canary.labels(model=name).info({"version": ""})
            log.info("%s canary %s ended (%s)", name, canary.version,
                     "promoted" if canary.version == promoted else "rolled back")

    def judge_canaries(self) -> dict[str, str]:
        """Promote or roll back each canary whose evidence is in (the leader calls it);
        returns ``{model: "promote" | "rollback"}`` for those decided."""
        s, decided = self.settings, {}
        for name, canary in list(self.pipeline.canaries.items()):
            self.metrics.export_canary(name, canary)
            verdict = canary.verdict(s.canary_min_samples, s.canary_max_samples)
            if verdict is None:
                continue
            report = canary.report()
            log.info("%s canary %s: %s (%s)", name, canary.version, verdict, report)
            self.metrics.canary_decisions.labels(model=name, outcome=verdict).inc()
            if verdict == "promote":
                self.registry.promote(name, canary.version)
                self._swap(name, canary.model)
            else:
                self.registry.end_canary(name, "worse online than the serving version",
                                         canary=report)
                self._drop_canary(name)
            self._changed(name, "serving")
            decided[name] = verdict
        return decided

    # when ----------------------------------------------------------------------------------
    def due(self, name: str = CODEC_MODEL) -> str | None:
        spec, s = SPECS[name], self.settings
        if name in self.pipeline.canaries:
            return None  # one candidate at a time: the running canary is decided first
        new, drifted = spec.pending(self.pipeline)
        if len(spec.window(self.pipeline)) < s.retrain_min_samples:
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
        spec = SPECS[name]
        window = spec.window(self.pipeline)
        train, holdout, suppressed = spec.split(window, 1 - self.settings.retrain_holdout_fraction,
                                                self.settings)
        if suppressed or self.settings.k_anonymity > 1:  # the models a check applies to
            self.suppressed = suppressed
        return train, holdout, len(window)

    def params(self, name: str) -> dict[str, Any]:
        """How the gates of ``name`` build their judge (as the daemon builds its learner)."""
        return SPECS[name].params(self.settings)

    async def _retrain(self, reason: str, name: str) -> dict[str, Any]:
        s, spec = self.settings, SPECS[name]
        train, holdout, size = self.split(name)
        spec.reset(self.pipeline)
        job = {"name": name, "store": str(self.registry.root), "train": train,
               "holdout": holdout, "threads": s.retrain_threads, "epochs": 30,
               "params": self.params(name), "min_gain": s.retrain_min_gain,
               "max_vocab": s.prefetch_max_vocab, "canary": s.canary_share > 0,
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
        except BaseException:  # cancelled (the daemon stops): the run must not outlive it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            Path(f.name).unlink(missing_ok=True)
        if proc.returncode != 0:
            return self._failed(name, started, err.decode(errors="replace")[-500:])
        result = json.loads(out.decode().strip().splitlines()[-1])
        self.metrics.retrain_samples.labels(model=name).set(result["samples"])
        log.info("retrain of %s (%s): %s", name, reason, result["reason"])
        return await self._judged(name, result, started)

    async def _judged(self, name: str, result: dict[str, Any], started: float
                      ) -> dict[str, Any]:
        """Count a gate's verdict; serve an accepted version, or start it as a canary."""
        m = self.metrics
        outcome = "accepted" if result["accepted"] else "rejected"
        m.retrains.labels(model=name, outcome=outcome).inc()
        m.retrain_seconds.labels(model=name).observe(time.perf_counter() - started)
        gone = self.registry.prune(name, self.settings.model_keep)
        if gone:
            log.info("deleted %d old %s versions (PAKIT_STREAM_MODEL_KEEP)", len(gone), name)
        if result["accepted"]:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, self._prepare, name, result["candidate"])
            if model is None:
                return {"outcome": "failed", **result,
                        "reason": "the accepted version could not be loaded"}
            if result.get("canary"):
                self._start_canary(name, model)
                self._changed(name, "canary")
            else:
                self._swap(name, model)
                self._changed(name, "serving")
            SPECS[name].on_accepted(m, result, self.settings)
        return {"outcome": outcome, **result}

    def _failed(self, name: str, started: float, why: str) -> dict[str, Any]:
        log.error("retrain of %s failed: %s", name, why)
        self.metrics.retrains.labels(model=name, outcome="failed").inc()
        self.metrics.retrain_seconds.labels(model=name).observe(time.perf_counter() - started)
        return {"outcome": "failed", "reason": why}

    # the admin gate, rollback, replication -------------------------------------------------
    def served_score(self, name: str, model, holdout, train=()) -> float:
        """The gate's score of a served model (:meth:`ModelSpec.judge
        <pakit_stream.specs.ModelSpec.judge>`)."""
        return SPECS[name].judge(model, train, holdout, self.params(name))[0]

    async def gate_candidate(self, name: str, version: str,
                             min_gain: float | None = None) -> dict[str, Any]:
        """Judge a registered candidate (trained anywhere) against the serving version on this
        daemon's held-out window, with the served (numpy) models; serve it (as a canary first,
        when ``canary_share`` is set), or reject it (it is kept for inspection)."""
        spec = SPECS[name]
        train, holdout, _ = self.split(name)
        if not holdout or not any(holdout):
            raise ModelLoadError(f"{name}: no recent data to judge a candidate on")

        class Served:  # what the registry's gate loads each version into
            @staticmethod
            def load(path):
                return spec.file_for(path)

        started = time.perf_counter()
        params = self.params(name)
        result = self.registry.gate(name, version, Served,
                                    lambda model: spec.judge(model, train, holdout, params)[0],
                                    min_gain=self.settings.retrain_min_gain
                                    if min_gain is None else min_gain,
                                    floor=spec.floor(train, holdout, params),
                                    canary=self.settings.canary_share > 0)
        return await self._judged(name, result, started)

    def rollback(self, name: str = CODEC_MODEL) -> str:
        """End the canary of ``name`` if one runs (the serving version stays); else serve the
        version served before. Returns the version that serves now."""
        if self.registry.canary(name) is not None:
            self.registry.end_canary(name, "rolled back by an operator")
            self._drop_canary(name)
            self._changed(name, "serving")
            return self.registry.serving(name)
        version = self.registry.rollback(name)
        if not self.load_serving(name):
            raise ModelLoadError(f"{name} {version} could not be loaded")
        self._changed(name, "serving")
        return version

    def _changed(self, name: str, role: str) -> None:
        for callback in self.on_serving_change:
            try:
                callback(name, role)
            except Exception:  # publishing must not undo what was served
                log.exception("could not announce the new %s version of %s", role, name)

    async def adopt(self, record: bytes) -> str | None:
        """Serve a version another worker published (see :meth:`ModelRegistry.install`), as it
        was published: serving, or a canary. Returns the model name, or ``None`` when nothing
        changed (this worker's own publication). The record is checked, stored and loaded in a
        thread before anything is promoted; only the swap runs on the loop."""
        loop = asyncio.get_running_loop()
        name, version, role = await loop.run_in_executor(None, self.registry.install, record,
                                                         tuple(SPECS))
        canary = self.pipeline.canaries.get(name)
        served = getattr(self.pipeline, SPECS[name].slot)
        if role == "canary" and canary is not None and canary.version == version:
            return None
        if role == "serving" and served is not None and served.version == version:
            if canary is None:
                return None
            self.registry.end_canary(name, "rolled back by the leader")
            self._drop_canary(name)  # the leader kept the serving version
            return name
        model = await loop.run_in_executor(None, self._prepare, name, version)
        if model is None:
            raise ModelLoadError(f"{name} {version}: the published {role} version could not "
                                 "be loaded")
        if role == "canary":
            self.registry.start_canary(name, version)
            self._start_canary(name, model)
        else:
            self.registry.promote(name, version)
            self._swap(name, model)
        return name
