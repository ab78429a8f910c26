"""Batch models from the leader to every worker, through the models topic.

The leader trains, gates and decides canaries; each change of what it serves is published as
one self-describing record (:meth:`ModelRegistry.export
<pakit_stream.registry.ModelRegistry.export>`): under the model's name for the serving version,
under ``<name>/canary`` for a canary. The topic is compacted, so the latest record of each key
is what a starting worker reads; the serving record comes after the canary record it ends, so
a worker reading from the start ends where the leader is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pakit_stream import resume
from pakit_stream.events.schema import MODELS_TOPIC
from pakit_stream.specs import SPECS

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["ModelReplication"]

log = logging.getLogger(__name__)


class ModelReplication:
    """Publishes this worker's serving changes (when it leads) and serves what the leader
    published (every worker reads the whole models topic, outside the consumer group; its own
    publications are recognised and skipped)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.retrainer = daemon.retrainer
        self.topic = daemon.topic(MODELS_TOPIC, partitions=1)
        self._sending: set[asyncio.Future] = set()
        self.retrainer.on_serving_change.append(self.publish)
        daemon.app.task(self.follow)

    def publish(self, name: str, role: str = "serving") -> None:
        """Send the current ``role`` version of ``name`` to the other workers."""
        record = self.retrainer.registry.export(name, role=role)
        key = name if role == "serving" else f"{name}/{role}"
        task = asyncio.ensure_future(self.topic.send(key=key.encode(), value=record,
                                                     partition=0))
        self._sending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._sending.discard)

    async def follow(self) -> None:
        """Serve what the leader publishes, for as long as the worker runs. A broker outage
        only pauses it; a models log recreated empty (a restarted memory-only broker) is read
        again from its start, and the leader publishes what it serves into it."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s failed (%r); retrying in 5 s", MODELS_TOPIC, exc)
                await asyncio.sleep(5)

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        d = self.daemon
        tp = TopicPartition(MODELS_TOPIC, 0)
        consumer = AIOKafkaConsumer(**d.consumer_args(max_partition_fetch_bytes=64 << 20,
                                                      fetch_max_bytes=64 << 20))
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning()
            read = 0  # the next offset to read
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                if resume.shrank(consumer.highwater(tp), read):
                    log.warning("%s was recreated; reading it again from its start", MODELS_TOPIC)
                    consumer.seek(tp, 0)
                    read = 0
                    if d.app.is_leader():
                        self.republish()
                    continue
                for records in batches.values():
                    for record in records:
                        read = record.offset + 1
                        await self._adopt(record)
        finally:
            await consumer.stop()

    def republish(self) -> None:
        """Publish every serving version and running canary again (into a recreated log)."""
        registry = self.retrainer.registry
        for name in SPECS:
            if registry.serving(name):
                self.publish(name)
            if registry.canary(name):
                self.publish(name, "canary")

    async def _adopt(self, record) -> None:
        try:
            name = await self.retrainer.adopt(record.value)
        except Exception:  # a bad record never stops the worker
            log.exception("refused a published model at offset %s", record.offset)
            return
        if name:
            log.info("now serving the %s versions the leader published", name)
