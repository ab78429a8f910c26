"""When the daemon acts on its own: checkpoints, hint replicas, consumer lag, event-loop lag,
retraining and canary decisions (the last two on the group's leader only)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pakit_stream import resume
from pakit_stream.daemon.rebalance import read_again
from pakit_stream.events.schema import TOPICS
from pakit_stream.specs import SPECS

if TYPE_CHECKING:
    from pakit_stream.daemon.core import Daemon

__all__ = ["install"]


def install(daemon: Daemon) -> None:
    app, settings = daemon.app, daemon.settings
    pipeline, metrics, retrainer = daemon.pipeline, daemon.metrics, daemon.retrainer

    async def checkpoint() -> None:
        await daemon.checkpoint()

    app.timer(settings.checkpoint_interval_s, name="pakit_stream.checkpoint")(checkpoint)
    if daemon.replicas is not None:  # a fresh hint replica (daemon.replica): one at start
        app.task(daemon.replicas.refresh)
        app.timer(settings.hint_refresh_s, name="pakit_stream.hint_replica")(
            daemon.replicas.refresh)

    async def watch_loop() -> None:
        """How late the event loop runs a callback that is due: what every hint waits for on
        top of its own work (``pakit_stream_event_loop_lag_seconds``)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            metrics.loop_lag.observe(max(0.0, loop.time() - due))

    app.task(watch_loop)

    async def measure_lag() -> None:
        """Messages behind the fetch high-water mark, per topic; a partition whose end fell
        below the applied offset was recreated, and is read again from its start."""
        lag: dict[str, int] = dict.fromkeys(TOPICS, 0)
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic in lag:
                high = consumer.highwater(tp)  # tansu's ListOffsets is wrong; the fetch HW is not
                if high is None:
                    continue
                done = pipeline.offsets.get(f"{tp.topic}/{tp.partition}", 0)
                if resume.shrank(high, done):
                    await read_again(daemon, tp, f"its end {high} is below the applied "
                                                 f"offset {done}")
                    done = 0
                lag[tp.topic] += high - done
        for topic_name, value in lag.items():
            metrics.lag.labels(topic=topic_name).set(value)
        for name, canary in list(pipeline.canaries.items()):  # both arms, on every worker
            metrics.export_canary(name, canary)

    app.timer(1.0, name="pakit_stream.lag")(measure_lag)

    async def maybe_retrain() -> None:
        """Only the leader trains the global batch models (the run itself is a subprocess)
        and decides their canaries; the other workers follow its publications."""
        retrainer.judge_canaries()
        for name in SPECS:
            reason = retrainer.due(name)
            if reason:
                await retrainer.retrain(reason, name)

    app.timer(settings.retrain_check_s, name="pakit_stream.retrain", on_leader=True)(
        maybe_retrain)
