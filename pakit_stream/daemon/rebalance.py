"""Rebalance and resume: where each assigned partition is read from, and the checkpoint before
partitions go to another worker.

Offsets live in the checkpoint with the state they produced, never in Faust's commits: on
assignment each partition is sought to the checkpoint's offset, after checking that the record
before it is still the one the checkpoint saw (:mod:`pakit_stream.resume`); a log recreated
under the same name (a restarted memory-only broker) is read again from its start.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pakit_stream import resume
from pakit_stream.events.schema import TOPICS

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["install", "read_again"]

log = logging.getLogger(__name__)


async def read_again(daemon: Daemon, tp, why: str) -> None:
    """The partition's log was recreated under the same name: read it from its start."""
    log.warning("%s/%s: %s; the log was recreated (a restarted memory-only broker?), "
                "reading it again from offset 0", tp.topic, tp.partition, why)
    daemon.pipeline.forget(f"{tp.topic}/{tp.partition}")
    daemon.metrics.log_resets.labels(topic=tp.topic).inc()
    await daemon.app.consumer.seek(tp, 0)


async def resume_assigned(daemon: Daemon, assigned) -> None:
    """Seek each assigned partition to its checkpoint offset (or its start, if the log there
    is not the one the checkpoint saw)."""
    pipeline = daemon.pipeline
    keys = {tp: f"{tp.topic}/{tp.partition}" for tp in assigned if tp.topic in TOPICS}
    saved = {tp: pipeline.offsets[k] for tp, k in keys.items() if pipeline.offsets.get(k)}
    try:  # is each saved offset still a position in the same log?
        seen = await resume.probe(daemon.bootstrap, saved,
                                  daemon.settings.resume_probe_timeout_s,
                                  **daemon.settings.kafka_config("aiokafka"))
    except Exception:
        log.exception("could not read the records before the saved offsets; resuming there")
        seen = {}
    for tp, offset in saved.items():
        record, high = seen.get(tp, (None, None))
        tail = pipeline.tails.get(keys[tp])
        if resume.judge(offset, tail, record, high) is resume.Verdict.RECREATED:
            await read_again(daemon, tp, f"the record before the saved offset {offset} is "
                                         "gone or different")
        else:
            await daemon.app.consumer.seek(tp, offset)
    # the others start from their beginning: seek_to_state, after Faust's own seek
    log.info("assigned %d partitions; resumed %d from checkpoint offsets, the others from "
             "their start", len(assigned), len(saved))


async def seek_to_state(daemon: Daemon) -> None:
    """Put every assigned telemetry partition where the state left it: after the last
    message it applied, or at its start if it applied none."""
    consumer = daemon.app.consumer
    for tp in consumer.assignment():
        if tp.topic in TOPICS:
            await consumer.seek(tp, daemon.pipeline.offsets.get(f"{tp.topic}/{tp.partition}", 0))


def _offsets_from_the_state(daemon: Daemon) -> None:
    """Faust commits the offsets it acknowledged on stop and rebalance, whatever the commit
    settings, and after every assignment seeks each partition to its committed offset, after
    our own seek. A worker whose state lacks a partition (a lost checkpoint, a new worker)
    would then skip what that state never learned, and an old commit would move a partition
    away from its checkpoint. So this worker never commits, and Faust's seek is followed by
    one to the state's offsets."""
    consumer = daemon.app.consumer
    faust_seek = consumer.perform_seek

    async def perform_seek() -> None:
        await faust_seek()  # Faust's own bookkeeping of what was committed
        await seek_to_state(daemon)

    async def commit(*args, **kwargs) -> bool:
        return False  # offsets live in the checkpoints, with the state they produced

    consumer.perform_seek = perform_seek
    consumer.commit = commit


def install(daemon: Daemon) -> None:
    app = daemon.app
    _offsets_from_the_state(daemon)

    @app.on_partitions_assigned.connect
    async def resume_from_checkpoint(sender, assigned, **kwargs) -> None:
        await resume_assigned(daemon, assigned)

    @app.on_partitions_revoked.connect
    async def checkpoint_before_revoke(sender, revoked, **kwargs) -> None:
        await daemon.checkpoint()

    # the signal keeps only weak references to its receivers
    daemon.receivers = (resume_from_checkpoint, checkpoint_before_revoke)
