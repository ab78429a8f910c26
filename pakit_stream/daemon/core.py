"""The :class:`Daemon`: one worker's state, services and Faust app, wired together.

Follow one event: the agent of its topic (:mod:`~pakit_stream.daemon.agents`) reads the raw
message value, hands it to :meth:`Pipeline.handle_sliced
<pakit_stream.pipeline.Pipeline.handle_sliced>` (decode, validate, learn, in slices that yield
the loop), sends whatever was refused to ``pakit.dlq`` with a reason, and moves on. A timer
(:mod:`~pakit_stream.daemon.timers`) checkpoints learner state with the offsets it reflects; on
partition assignment each partition is sought to the checkpoint's offset
(:mod:`~pakit_stream.daemon.rebalance`), so Faust's own committed offsets never decide where
replay starts.
"""

from __future__ import annotations

import faust

from pakit_stream.checkpoint import CheckpointStore
from pakit_stream.daemon import agents, rebalance, timers, views
from pakit_stream.daemon.agents import DeadLetters
from pakit_stream.daemon.replica import HintReplicas
from pakit_stream.daemon.replication import ModelReplication
from pakit_stream.pipeline import Pipeline
from pakit_stream.retrain import Retrainer
from pakit_stream.routing import Forwarder, advertised_url
from pakit_stream.serving.hints import HintService
from pakit_stream.settings import Settings

__all__ = ["Daemon"]

_NEVER = 10**12  # commit thresholds: offsets live in our checkpoints, not in Faust's commits


class Daemon:
    """One worker: the pipeline and its checkpoints, the retrainer, the hint service, and the
    Faust app (:attr:`app`) that runs the agents, timers and views around them."""

    def __init__(self, settings: Settings, bootstrap: str, pipeline: Pipeline,
                 checkpoints: CheckpointStore) -> None:
        self.settings, self.bootstrap = settings, bootstrap
        self.pipeline, self.checkpoints = pipeline, checkpoints
        self.metrics = pipeline.metrics
        self.metrics.watch_gc()
        self.hints = HintService(pipeline)
        self.retrainer = Retrainer(settings, pipeline)
        self.retrainer.load_all()
        self.app = self._faust_app()
        routed = self.metrics.hints_routed
        self.forward = Forwarder(  # the URL as the group's assignment spells it
            str(self.app.conf.canonical_url), self.app.router.external_topics_metadata,
            settings.route_timeout_s, lambda outcome: routed.labels(outcome=outcome).inc())
        self.replicas = HintReplicas(self) if settings.hint_port is not None else None
        self.dead_letters = DeadLetters(self)
        self.replication = ModelReplication(self)
        agents.install(self)
        timers.install(self)
        rebalance.install(self)
        views.install(self)

    def _faust_app(self) -> faust.App:
        s = self.settings
        return faust.App(
            s.app_id,
            broker=f"kafka://{self.bootstrap}",
            broker_credentials=s.faust_credentials(),
            store="memory://",
            autodiscover=False,
            datadir=str(s.data_dir / "faust"),
            topic_partitions=s.topic_partitions,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            # tansu completes a group join only after the rebalance timeout (Faust's default:
            # 60 s, measured here as a 30 s start-up stall); short timeouts make start and
            # failover quick
            broker_rebalance_timeout=s.rebalance_timeout_s,
            broker_session_timeout=s.rebalance_timeout_s,
            broker_heartbeat_interval=min(3.0, s.rebalance_timeout_s / 3),
            broker_commit_every=_NEVER,
            broker_commit_interval=float(_NEVER),
            # room for a DLQ record, and for a published model (the GRU's file is ~8 MB)
            producer_max_request_size=max(s.dlq_max_bytes + (64 << 10), 32 << 20),
            consumer_max_fetch_size=max(s.max_message_bytes, 4 << 20),
            stream_buffer_maxsize=s.stream_buffer_messages,
            web_enabled=True,
            # Faust's /router/ (the group's assignment) and /table/ are no part of the API
            # (serving.api.ROUTES); its index "/" ({"status": "OK"}) has no switch
            web_router_enabled=False,
            web_tables_enabled=False,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            # where the other workers reach this one: it travels in the group's assignment, so
            # that a hint for a node another worker owns is forwarded there (routing)
            canonical_url=advertised_url(s),
        )

    def topic(self, name: str, partitions: int | None = None):
        """A topic of raw bytes (keys and values as they are on the wire)."""
        return self.app.topic(name, value_serializer="raw", key_serializer="raw",
                              partitions=partitions or self.settings.topic_partitions)

    def consumer_args(self, **overrides) -> dict:
        """Arguments of an aiokafka consumer that reads outside the group (the global topics,
        the models topic): where the brokers are, and how to reach them securely."""
        return {"bootstrap_servers": self.bootstrap, "group_id": None,
                "enable_auto_commit": False, "auto_offset_reset": "earliest",
                **self.settings.kafka_config("aiokafka"), **overrides}

    async def checkpoint(self) -> None:
        """Checkpoint the pipeline, once the dead letters it covers are flushed."""
        await self.checkpoints.checkpoint(self.pipeline, self.app.producer.flush)

    def final_checkpoint(self) -> int | None:
        """The checkpoint on the way out (bytes written); ``None`` when a message was cut off
        between two of its slices (the last periodic checkpoint stands)."""
        if self.pipeline.interrupted:
            return None
        return self.checkpoints.write_now(self.pipeline)
