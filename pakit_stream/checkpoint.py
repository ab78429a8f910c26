"""Checkpoints: the pipeline's learners and offsets, together, in one signed file.

The snapshot is taken synchronously between two messages; the dead-letter records of the
messages it covers are flushed; only then is the file written (off the event loop) and renamed
into place. On start the daemon restores the newest checkpoint and seeks each partition to the
offset saved with it, so a crash replays at most one checkpoint interval and loses nothing the
broker acknowledged.

Taking the snapshot blocks the event loop (hints wait) for as long as pickling the learners
takes, so a tick at which no message was handled since the last write skips it: the file on
disk already is the state (outcome ``unchanged``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pakit_stream import persist
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.pipeline import Pipeline

__all__ = ["CheckpointStore"]

log = logging.getLogger(__name__)


class CheckpointStore:
    """Writes and restores ``<data_dir>/checkpoints/daemon.ckpt``."""

    def __init__(self, data_dir: Path, key: bytes, name: str = "daemon") -> None:
        self.path = Path(data_dir) / "checkpoints" / f"{name}.ckpt"
        self.key = key
        self._lock = asyncio.Lock()
        self._written: tuple | None = None  # the offsets the file on disk reflects

    def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or ``None`` if there is none; a bad file raises ModelLoadError."""
        if not self.path.exists():
            return None
        return persist.load(self.path, self.key)

    def restore(self, pipeline: Pipeline) -> bool:
        try:
            snap = self.load()
        except ModelLoadError:
            log.exception("checkpoint %s refused; starting from empty state", self.path)
            return False
        if snap is None:
            return False
        pipeline.restore(snap)
        log.info("restored checkpoint from %s: offsets %s", self.path, snap["offsets"])
        return True

    def write_now(self, pipeline: Pipeline) -> int:
        """Synchronous checkpoint (for shutdown and offline use); returns its size."""
        blob = persist.dumps(pipeline.snapshot(), self.key)
        persist.write_atomic(self.path, blob)
        return len(blob)

    async def checkpoint(self, pipeline: Pipeline,
                         flush: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Snapshot now, flush what the covered messages produced, write; never raises."""
        if self._lock.locked():  # a slow write is still going: skip, the next tick catches up
            return False
        m = pipeline.metrics
        mark = tuple(sorted(pipeline.offsets.items()))
        if mark == self._written and self.path.exists():
            m.checkpoints.labels(outcome="unchanged").inc()
            m.checkpoint_timestamp.set(time.time())
            return True
        async with self._lock:
            started = time.perf_counter()
            # acquiring a free asyncio.Lock does not suspend: the snapshot reflects ``mark``
            try:
                blob = persist.dumps(pipeline.snapshot(), self.key)
                if flush is not None:
                    await flush()
                await asyncio.get_running_loop().run_in_executor(
                    None, persist.write_atomic, self.path, blob)
            except Exception:
                m.checkpoints.labels(outcome="failed").inc()
                log.exception("checkpoint to %s failed; learner state is still served", self.path)
                return False
            self._written = mark
            m.checkpoints.labels(outcome="ok").inc()
            m.checkpoint_seconds.observe(time.perf_counter() - started)
            m.checkpoint_bytes.set(len(blob))
            m.checkpoint_timestamp.set(time.time())
            return True
