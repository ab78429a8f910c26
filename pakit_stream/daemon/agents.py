"""What the daemon reads: one agent per telemetry topic, the global topics' replica reader, and
the dead letters of both."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from pakit_stream import resume
from pakit_stream.events.decode import Rejected
from pakit_stream.events.schema import DLQ_TOPIC, TOPICS
from pakit_stream.pipeline import GLOBAL_SCOPE, GLOBAL_TOPICS

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["DeadLetters", "dlq_record", "install"]

log = logging.getLogger(__name__)


def _field_names(raw: bytes) -> list[str]:
    """The top-level field names of a JSON object (an envelope's, and its events'), at most 64
    of at most 64 characters each; ``[]`` when it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    objects = [value] if isinstance(value, dict) else []
    if isinstance(value, dict) and isinstance(value.get("events"), list):
        objects += [e for e in value["events"] if isinstance(e, dict)]
    names = sorted({str(k)[:64] for o in objects for k in o})
    return names[:64]


def dlq_record(reject: Rejected, source: bytes, max_bytes: int
               ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The DLQ value and headers of a refused message or event.

    The value is the refused bytes themselves; one longer than ``max_bytes`` (it was refused for
    its size) is cut to ``max_bytes``, its full size and SHA-256 going into headers. What was
    refused because it could carry block content is not kept: its value is a JSON summary (its
    size, SHA-256 and field names), so the dead-letter topic never holds what the contract
    refuses.

    >>> value, headers = dlq_record(Rejected(b"x" * 10, "too big", "invalid"), b"t/0/7", 4)
    >>> value, dict(headers)["pakit-original-bytes"]
    (b'xxxx', b'10')
    >>> value, _ = dlq_record(Rejected(b'{"content": "secret"}', "content", "privacy"), b"", 99)
    >>> json.loads(value)["fields"], b"secret" in value
    (['content'], False)
    """
    headers = [("pakit-reason", reject.reason.encode()), ("pakit-kind", reject.kind.encode()),
               ("pakit-source", source),
               ("pakit-index", b"" if reject.index is None else str(reject.index).encode())]
    value = reject.raw
    if reject.kind == "privacy":
        digest = hashlib.sha256(value).hexdigest()
        headers += [("pakit-original-bytes", str(len(value)).encode()),
                    ("pakit-original-sha256", digest.encode())]
        return json.dumps({"refused": "privacy", "bytes": len(value), "sha256": digest,
                           "fields": _field_names(value)}).encode(), headers
    if len(value) > max_bytes:
        headers += [("pakit-original-bytes", str(len(value)).encode()),
                    ("pakit-original-sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    return value, headers


class DeadLetters:
    """Refused messages and events go to ``pakit.dlq`` with a reason; a message whose handling
    fails is parked there whole, and the stream goes on."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.pipeline, self.metrics = daemon.pipeline, daemon.metrics
        self.max_bytes = daemon.settings.dlq_max_bytes
        self.topic = daemon.topic(DLQ_TOPIC)
        #: the longest wait between two tries of a dead-letter write
        self.max_backoff_s = 5.0

    async def send(self, rejects: list[Rejected], message: Any) -> None:
        """Dead-letter each reject, and return once the broker has acknowledged every one.
        The agent holds :meth:`Pipeline.applying <pakit_stream.pipeline.Pipeline.applying>`
        meanwhile, so no checkpoint covers the message before its dead letters are stored. A
        failed write is counted (``pakit_stream_dlq_failures_total``) and tried again, backing
        off up to :attr:`max_backoff_s`; the message's partition waits for it."""
        source = f"{message.topic}/{message.partition}/{message.offset}".encode()
        for r in rejects:
            value, headers = dlq_record(r, source, self.max_bytes)
            backoff = 0.05
            while True:
                try:
                    delivery = await self.topic.send(key=message.key, value=value,
                                                     headers=headers)
                    await delivery  # the broker's acknowledgement
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # counted and alertable; the record is not dropped
                    log.warning("could not dead-letter a %s event from %s (%r); retrying in "
                                "%.2f s", r.kind, source.decode(), exc, backoff)
                    self.metrics.dlq_failures.inc()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
            self.metrics.dlq.labels(kind=r.kind).inc()

    async def handled(self, topic: str, partition: int, offset: int, value: bytes | None,
                      scope: str = "", count: bool = True, **how) -> list[Rejected]:
        """What of the message goes to the DLQ. A bug while handling it must not stop the
        stream: the whole message is parked instead (marked done, dead-lettered)."""
        try:
            return await self.pipeline.handle_sliced(topic, partition, offset, value,
                                                     scope=scope, count=count, **how) or []
        except Exception as exc:
            log.exception("%s%s/%s/%s failed", scope, topic, partition, offset)
            if count:
                self.metrics.events.labels(topic=topic, outcome="error").inc()
            self.pipeline.mark(f"{scope}{topic}/{partition}", offset, value)
            return [Rejected(value or b"", f"internal error: {exc!r}", "error")]


def _agent(daemon: Daemon, topic_name: str):
    pipeline, dead = daemon.pipeline, daemon.dead_letters
    learn = topic_name not in GLOBAL_TOPICS  # those, every worker's replica reader learns

    async def consume(stream):
        async for event in stream.events():
            message = event.message
            # a checkpoint waits for this block to end: its snapshot never holds half an
            # envelope, nor an offset whose dead letters are not yet queued
            async with pipeline.applying():
                rejects = await dead.handled(topic_name, message.partition, message.offset,
                                             event.value, learn=learn)
                if rejects:
                    await dead.send(rejects, message)
            # a buffered stream never suspends by itself: yield once per message, so the
            # hints and timers waiting on the loop are served between two messages
            await asyncio.sleep(0)

    consume.__name__ = consume.__qualname__ = "agent_" + topic_name.replace(".", "_")
    return consume


class GlobalReader:
    """Every worker learns every partition of the global topics, reading them outside the
    consumer group (as a Kafka Streams GlobalKTable is read), from the offsets its checkpoint
    saved under the global scope. The group's owner of a partition validates and dead-letters
    its messages; a learner's failure on an event, which only the readers see, is dead-lettered
    by each worker (the ``pakit-source`` header tells the copies apart from distinct
    failures)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    async def run(self) -> None:
        while True:
            try:
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the global topics failed (%r); retrying in 5 s", exc)
                await asyncio.sleep(5)

    async def _read(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        d = self.daemon
        pipeline = d.pipeline
        consumer = AIOKafkaConsumer(**d.consumer_args(
            max_partition_fetch_bytes=d.settings.max_message_bytes))
        await consumer.start()
        try:
            tps = []
            while not tps:
                await consumer.topics()  # metadata
                tps = [TopicPartition(t, p) for t in GLOBAL_TOPICS
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
                if not tps:
                    await asyncio.sleep(1)
            consumer.assign(tps)
            for tp in tps:
                key = f"{GLOBAL_SCOPE}{tp.topic}/{tp.partition}"
                saved = pipeline.offsets.get(key, pipeline.legacy_global_offsets.get(key))
                if saved is None:
                    await consumer.seek_to_beginning(tp)
                else:  # a log recreated shorter is caught below, by its fetch high-water mark
                    consumer.seek(tp, saved)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for tp in tps:  # a log recreated under the same name is read from its start
                    key = f"{GLOBAL_SCOPE}{tp.topic}/{tp.partition}"
                    if resume.shrank(consumer.highwater(tp), pipeline.offsets.get(key, 0)):
                        log.warning("%s was recreated; the replica reads it again from its "
                                    "start", key)
                        pipeline.forget(key)
                        batches.pop(tp, None)
                        consumer.seek(tp, 0)
                for tp, records in batches.items():
                    for record in records:
                        await self._apply(tp, record)
                    await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def _apply(self, tp, record) -> None:
        d = self.daemon
        async with d.pipeline.applying():
            rejects = await d.dead_letters.handled(tp.topic, tp.partition, record.offset,
                                                   record.value, scope=GLOBAL_SCOPE,
                                                   count=False)
            # a learner's failure is not the group owner's to see (it only validates): every
            # worker dead-letters it, with the same source header, so none is lost and
            # duplicates are recognisable
            failed = [r for r in rejects if r.kind == "error"]
            if failed:
                d.metrics.events.labels(topic=tp.topic, outcome="error").inc(len(failed))
                await d.dead_letters.send(failed, record)


def install(daemon: Daemon) -> None:
    """An agent for each telemetry topic, and the global topics' reader."""
    app = daemon.app
    for topic_name in TOPICS:
        app.agent(daemon.topic(topic_name), name=f"pakit_stream.{topic_name}")(
            _agent(daemon, topic_name))
    reader = GlobalReader(daemon)

    async def follow_global() -> None:
        await reader.run()

    app.task(follow_global)
