"""The Faust wiring: one agent per telemetry topic, timers, and the HTTP API.

Follow one event: the agent of its topic reads the raw message value, hands it to
:meth:`Pipeline.handle <pakit_stream.pipeline.Pipeline.handle>` (decode, validate, learn),
sends whatever was refused to ``pakit.dlq`` with a reason, and moves on. A timer checkpoints
learner state with the offsets it reflects; on partition assignment each partition is sought to
the checkpoint's offset, so Faust's own committed offsets never decide where replay starts.
"""

from __future__ import annotations

import asyncio

import hashlib
import hmac
import logging
import ssl
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from pakit_stream import resume
from pakit_stream.checkpoint import CheckpointStore
from pakit_stream.events.decode import Rejected
from pakit_stream.events.schema import DLQ_TOPIC, MODELS_TOPIC, TOPICS
from pakit_stream.exceptions import PakitStreamError
from pakit_stream.pipeline import GLOBAL_SCOPE, GLOBAL_TOPICS, Pipeline
from pakit_stream.retrain import MODELS, Retrainer
from pakit_stream.routing import FORWARDED, HINT_TOPICS, advertised_url, owner_of
from pakit_stream.serving.hints import BadRequest, HintService
from pakit_stream.settings import Settings

__all__ = ["create_app", "credentials"]

log = logging.getLogger(__name__)


class _NodeOnly(msgspec.Struct):
    node_id: str | None = None
_NEVER = 10**12  # commit thresholds: offsets live in our checkpoints, not in Faust's commits


def dlq_record(reject: Rejected, source: bytes, max_bytes: int
               ) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The DLQ value and headers of a refused message or event.

    The value is the refused bytes themselves; one longer than ``max_bytes`` (it was refused for
    its size) is cut to ``max_bytes``, its full size and SHA-256 going into headers.

    >>> value, headers = dlq_record(Rejected(b"x" * 10, "too big", "invalid"), b"t/0/7", 4)
    >>> value, dict(headers)["pakit-original-bytes"]
    (b'xxxx', b'10')
    """
    headers = [("pakit-reason", reject.reason.encode()), ("pakit-kind", reject.kind.encode()),
               ("pakit-source", source),
               ("pakit-index", b"" if reject.index is None else str(reject.index).encode())]
    value = reject.raw
    if len(value) > max_bytes:
        headers += [("pakit-original-bytes", str(len(value)).encode()),
                    ("pakit-original-sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    return value, headers


def credentials(settings: Settings):
    """Faust's broker credentials for the security settings; ``None`` for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context)


def _aiokafka_security(settings: Settings) -> dict[str, Any]:
    """The security settings as aiokafka arguments (it takes an SSL context, not files)."""
    config = {"security_protocol": settings.kafka_security_protocol}
    creds = credentials(settings)
    context = getattr(creds, "ssl_context", None) or getattr(creds, "context", None)
    if context is not None:
        config["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        config.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return config


def create_app(settings: Settings, bootstrap: str, pipeline: Pipeline,
               checkpoints: CheckpointStore) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
        broker_credentials=credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        # tansu completes a group join only after the rebalance timeout (Faust's default: 60 s,
        # measured here as a 30 s start-up stall); short timeouts make start and failover quick
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.rebalance_timeout_s / 3),
        broker_commit_every=_NEVER,
        broker_commit_interval=float(_NEVER),
        # room for a DLQ record, and for a published model (the GRU's file is ~8 MB)
        producer_max_request_size=max(settings.dlq_max_bytes + (64 << 10), 32 << 20),
        consumer_max_fetch_size=max(settings.max_message_bytes, 4 << 20),
        stream_buffer_maxsize=settings.stream_buffer_messages,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # where the other workers reach this one: it travels in the group's assignment, so
        # that a hint for a node another worker owns is forwarded there (pakit_stream.routing)
        canonical_url=advertised_url(settings),
    )
    hints = HintService(pipeline)
    retrainer = Retrainer(settings, pipeline)
    retrainer.load_all()
    dlq = app.topic(DLQ_TOPIC, value_serializer="raw", key_serializer="raw",
                    partitions=settings.topic_partitions)
    metrics = pipeline.metrics
    models_topic = app.topic(MODELS_TOPIC, value_serializer="raw", key_serializer="raw",
                             partitions=1)

    def publish(name: str) -> None:
        """The leader's new serving version goes to every worker through the models topic
        (compacted: the latest record per model is what a starting worker reads)."""
        record = retrainer.registry.export(name)
        task = asyncio.ensure_future(models_topic.send(key=name.encode(), value=record,
                                                    partition=0))
        sending.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(sending.discard)

    sending: set[asyncio.Future] = set()
    retrainer.on_serving_change.append(publish)

    @app.task
    async def follow_models() -> None:
        """Every worker reads the whole models topic, outside the consumer group, and serves
        what the leader published (its own publications are recognised and skipped). A broker
        outage only pauses it; a models log recreated empty (a restarted memory-only broker) is
        read again from its start, and the leader publishes its serving versions into it."""
        while True:
            try:
                await _follow_models()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s failed (%r); retrying in 5 s", MODELS_TOPIC, exc)
                await asyncio.sleep(5)

    async def _follow_models() -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(MODELS_TOPIC, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=64 << 20,
            fetch_max_bytes=64 << 20, **_aiokafka_security(settings))
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
                    if app.is_leader():
                        for name in MODELS:
                            if retrainer.registry.serving(name):
                                publish(name)
                    continue
                for records in batches.values():
                    for record in records:
                        read = record.offset + 1
                        try:
                            name = await retrainer.adopt(record.value)
                        except Exception:
                            log.exception("refused a published model at offset %s", record.offset)
                            continue
                        if name:
                            log.info("now serving the %s version the leader published", name)
        finally:
            await consumer.stop()

    async def to_dlq(rejects: list[Rejected], message: Any) -> None:
        source = f"{message.topic}/{message.partition}/{message.offset}".encode()
        for r in rejects:
            value, headers = dlq_record(r, source, settings.dlq_max_bytes)
            try:
                await dlq.send(key=message.key, value=value, headers=headers)
            except Exception:  # the stream must go on; the failure is counted and alertable
                log.exception("could not dead-letter a %s event from %s", r.kind, source.decode())
                metrics.dlq_failures.inc()
                continue
            metrics.dlq.labels(kind=r.kind).inc()

    async def handled(topic: str, partition: int, offset: int, value: bytes | None,
                      scope: str = "", count: bool = True, **how) -> list[Rejected]:
        """What of the message goes to the DLQ. A bug while handling it must not stop the
        stream: the whole message is parked instead (marked done, dead-lettered)."""
        try:
            return await pipeline.handle_sliced(topic, partition, offset, value, scope=scope,
                                                count=count, **how) or []
        except Exception as exc:
            log.exception("%s%s/%s/%s failed", scope, topic, partition, offset)
            if count:
                metrics.events.labels(topic=topic, outcome="error").inc()
            pipeline.mark(f"{scope}{topic}/{partition}", offset, value)
            return [Rejected(value or b"", f"internal error: {exc!r}", "error")]

    def make_agent(topic_name: str):
        learn = topic_name not in GLOBAL_TOPICS  # those, every worker's replica reader learns

        async def consume(stream):
            async for event in stream.events():
                message = event.message
                # a checkpoint waits for this block to end: its snapshot never holds half an
                # envelope, nor an offset whose dead letters are not yet queued
                async with pipeline.applying():
                    rejects = await handled(topic_name, message.partition, message.offset,
                                            event.value, learn=learn)
                    if rejects:
                        await to_dlq(rejects, message)
                # a buffered stream never suspends by itself: yield once per message, so the
                # hints and timers waiting on the loop are served between two messages
                await asyncio.sleep(0)

        consume.__name__ = consume.__qualname__ = "agent_" + topic_name.replace(".", "_")
        return consume

    for topic_name in TOPICS:
        topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw",
                          partitions=settings.topic_partitions)
        app.agent(topic, name=f"pakit_stream.{topic_name}")(make_agent(topic_name))

    @app.task
    async def follow_global() -> None:
        """Every worker learns every partition of the global topics, reading them outside the
        consumer group (as a Kafka Streams GlobalKTable is read), from the offsets its
        checkpoint saved under the global scope. The group's owner of a partition validates
        and dead-letters its messages; a learner's failure on an event, which only the
        readers see, is dead-lettered by each worker (the ``pakit-source`` header tells the
        copies apart from distinct failures)."""
        while True:
            try:
                await _follow_global()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the global topics failed (%r); retrying in 5 s", exc)
                await asyncio.sleep(5)

    async def _follow_global() -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=settings.max_message_bytes,
            **_aiokafka_security(settings))
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
                        async with pipeline.applying():
                            rejects = await handled(tp.topic, tp.partition, record.offset,
                                                    record.value, scope=GLOBAL_SCOPE,
                                                    count=False)
                            # a learner's failure is not the group owner's to see (it only
                            # validates): every worker dead-letters it, with the same source
                            # header, so none is lost and duplicates are recognisable
                            failed = [r for r in rejects if r.kind == "error"]
                            if failed:
                                metrics.events.labels(topic=tp.topic, outcome="error").inc(
                                    len(failed))
                                await to_dlq(failed, record)
                    await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def flush() -> None:
        await app.producer.flush()

    async def checkpoint() -> None:
        await checkpoints.checkpoint(pipeline, flush)

    app.timer(settings.checkpoint_interval_s, name="pakit_stream.checkpoint")(checkpoint)

    async def read_again(tp, why: str) -> None:
        """The partition's log was recreated under the same name: read it from its start."""
        log.warning("%s/%s: %s; the log was recreated (a restarted memory-only broker?), "
                    "reading it again from offset 0", tp.topic, tp.partition, why)
        pipeline.forget(f"{tp.topic}/{tp.partition}")
        metrics.log_resets.labels(topic=tp.topic).inc()
        await app.consumer.seek(tp, 0)

    @app.task
    async def watch_loop() -> None:
        """How late the event loop runs a callback that is due: what every hint waits for on
        top of its own work (``pakit_stream_event_loop_lag_seconds``)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            metrics.loop_lag.observe(max(0.0, loop.time() - due))

    @app.timer(1.0, name="pakit_stream.lag")
    async def measure_lag() -> None:
        lag: dict[str, int] = dict.fromkeys(TOPICS, 0)
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic in lag:
                high = consumer.highwater(tp)  # tansu's ListOffsets is wrong; the fetch HW is not
                if high is None:
                    continue
                done = pipeline.offsets.get(f"{tp.topic}/{tp.partition}", 0)
                if resume.shrank(high, done):
                    await read_again(tp, f"its end {high} is below the applied offset {done}")
                    done = 0
                lag[tp.topic] += high - done
        for topic_name, value in lag.items():
            metrics.lag.labels(topic=topic_name).set(value)

    @app.timer(settings.retrain_check_s, name="pakit_stream.retrain", on_leader=True)
    async def maybe_retrain() -> None:
        # only the leader trains the global batch models; the run itself is a subprocess
        for name in MODELS:
            reason = retrainer.due(name)
            if reason:
                await retrainer.retrain(reason, name)

    @app.on_partitions_assigned.connect
    async def resume_from_checkpoint(sender, assigned, **kwargs) -> None:
        keys = {tp: f"{tp.topic}/{tp.partition}" for tp in assigned if tp.topic in TOPICS}
        saved = {tp: pipeline.offsets[k] for tp, k in keys.items() if pipeline.offsets.get(k)}
        try:  # is each saved offset still a position in the same log?
            seen = await resume.probe(bootstrap, saved, settings.resume_probe_timeout_s,
                                      **_aiokafka_security(settings))
        except Exception:
            log.exception("could not read the records before the saved offsets; resuming there")
            seen = {}
        for tp, offset in saved.items():
            record, high = seen.get(tp, (None, None))
            tail = pipeline.tails.get(keys[tp])
            if resume.judge(offset, tail, record, high) is resume.Verdict.RECREATED:
                await read_again(tp, f"the record before the saved offset {offset} is gone "
                                     "or different")
            else:
                await app.consumer.seek(tp, offset)
        log.info("assigned %d partitions; resumed %d from checkpoint offsets",
                 len(assigned), len(saved))

    @app.on_partitions_revoked.connect
    async def checkpoint_before_revoke(sender, revoked, **kwargs) -> None:
        await checkpoint()

    _add_views(app, hints, retrainer, settings)
    app.pakit = {"pipeline": pipeline, "hints": hints, "checkpoints": checkpoints,
                 "retrainer": retrainer}
    return app


def _add_views(app: faust.App, hints: HintService, retrainer: Retrainer,
               settings: Settings) -> None:
    registry = hints.pipeline.metrics.registry
    admin_token = settings.admin_token
    own_url = str(app.conf.canonical_url).rstrip("/")  # as the assignment spells it
    routed = hints.pipeline.metrics.hints_routed
    session = []  # one aiohttp session, made on first use (inside the running loop)

    async def forwarded(view: View, kind: str, request: Request, body: bytes
                        ) -> Response | None:
        """The owner's answer to a hint about a node this worker does not own; ``None``: answer
        here (this worker owns the node, the request was forwarded already, there is no
        ``node_id``, or the owner did not answer in time)."""
        topic = HINT_TOPICS.get(kind)
        if topic is None or request.headers.get(FORWARDED):
            return None
        try:
            node = msgspec.json.decode(body, type=_NodeOnly).node_id
        except msgspec.MsgspecError:
            return None  # the local answer explains what is wrong with the request
        owner = None if node is None else owner_of(
            node, app.router.external_topics_metadata(), topic)
        if owner is None or owner.rstrip("/") == own_url:
            return None
        import aiohttp

        if not session:
            session.append(aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.route_timeout_s)))
        try:
            async with session[0].post(f"{owner.rstrip('/')}/v1/hints/{kind}", data=body,
                                       headers={FORWARDED: own_url,
                                                "Content-Type": "application/json"}) as r:
                text = await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("the owner %s of node %s did not answer a %s hint (%r); answering "
                        "here", owner, node, kind, exc)
            routed.labels(outcome="owner_failed").inc()
            return None
        routed.labels(outcome="forwarded").inc()
        return view.bytes(text, status=status, content_type="application/json",
                          headers={"X-Pakit-Answered-By": owner})

    def refused(view: View, request: Request, name: str) -> Response | None:
        """The error response for an unauthorised request or an unknown model, else None."""
        given = request.headers.get("Authorization", "")
        if not (admin_token and hmac.compare_digest(given, f"Bearer {admin_token}")):
            return view.json({"error": "admin endpoints need the bearer token of "
                                       "PAKIT_STREAM_ADMIN_TOKEN"}, status=403)
        if name not in MODELS:
            return view.json({"error": f"unknown model {name}"}, status=404)
        return None

    def answer(view: View, call, *args) -> Response:
        try:
            return view.json(call(*args))
        except BadRequest as exc:
            return view.json({"error": exc.reason}, status=400)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(hints.health())

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway
            return self.bytes(generate_latest(registry), content_type="text/plain; version=0.0.4")

    def posted_hint(kind: str, call):
        class Hint(View):
            async def post(self, request: Request) -> Response:
                body = await request.read()
                owners = await forwarded(self, kind, request, body)
                return answer(self, call, body) if owners is None else owners
        return Hint

    for kind in ("peer", "network", "compression", "prefetch"):  # POST {JSON body}
        app.page(f"/v1/hints/{kind}", name=f"hint_{kind}")(posted_hint(kind,
                                                                        getattr(hints, kind)))

    @app.page("/v1/admin/models/{name}/gate/{version}")
    class AdminGate(View):
        async def post(self, request: Request, name: str, version: str) -> Response:
            if (error := refused(self, request, name)) is not None:
                return error
            try:
                gain = request.query.get("min_gain")
                return self.json(retrainer.gate_candidate(
                    name, version, None if gain is None else float(gain)))
            except (ValueError, PakitStreamError) as exc:
                return self.json({"error": str(exc)}, status=409)

    @app.page("/v1/admin/models/{name}/{action}")
    class Admin(View):
        async def post(self, request: Request, name: str, action: str) -> Response:
            if (error := refused(self, request, name)) is not None:
                return error
            if action not in ("rollback", "retrain"):
                return self.json({"error": f"unknown action {action}"}, status=404)
            if action == "retrain":
                return self.json(await retrainer.retrain("admin", name))
            try:
                return self.json({"name": name, "serving": retrainer.rollback(name)})
            except (ValueError, PakitStreamError) as exc:
                return self.json({"error": str(exc)}, status=409)

    @app.page("/v1/hints/similar/{block_hash}")
    class SimilarHint(View):
        async def get(self, request: Request, block_hash: str) -> Response:
            return answer(self, hints.similar, block_hash, request.query.get("top_k", "5"),
                          request.query.get("min_jaccard"))
