"""Start the daemon: broker (embedded unless one is configured), state, Faust worker."""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import importlib.util
import logging
from pathlib import Path

from pakit_stream import persist
from pakit_stream.broker import EmbeddedBroker, create_topics, wait_for_broker
from pakit_stream.checkpoint import CheckpointStore
from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

__all__ = ["run_daemon", "build"]

log = logging.getLogger(__name__)


def build(settings: Settings, bootstrap: str):
    """The :class:`~pakit_stream.daemon.core.Daemon`: its pipeline restored from the
    checkpoint, the Faust app around it."""
    from pakit_stream.daemon.core import Daemon

    legacy = settings.data_dir / "state.key"  # where versions before 0.2 kept it
    key_file = Path(settings.state_key_file).expanduser()
    if settings.state_key is None and legacy.exists() and not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(legacy, key_file)  # out of the data directory, the checkpoints still verify
        log.warning("moved the state key from %s to %s", legacy, key_file)
    key = persist.resolve_key(settings.state_key, key_file)
    pipeline = Pipeline(settings, Metrics())
    checkpoints = CheckpointStore(settings.data_dir, key)
    checkpoints.restore(pipeline)
    return Daemon(settings, bootstrap, pipeline, checkpoints)


def run_daemon(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGINT/SIGTERM; a final checkpoint is written on the way out."""
    import mode.loop

    loop = settings.event_loop
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        log.warning("uvloop is not installed; using asyncio's own loop")
        loop = "aio"
    mode.loop.use(loop)  # before anything creates the loop
    # a thread that holds the GIL (a model check, a load) hands it back to the event loop
    # every 0.5 ms rather than every 5 ms, so that it delays a hint by that much at most
    sys.setswitchinterval(0.0005)
    # the learners allocate small objects by the million; young collections every 700 of them
    # add up to a share of the loop, and the old ones are frozen at each checkpoint
    gc.set_threshold(50_000, 20, 100)
    import faust

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if settings.broker:
            bootstrap = settings.broker
            wait_for_broker(bootstrap, **settings.kafka_config())
        else:
            broker = stack.enter_context(EmbeddedBroker(log_path=settings.data_dir / "broker.log"))
            bootstrap = broker.bootstrap
            print(f"embedded broker listening on {bootstrap}", flush=True)
        create_topics(bootstrap, settings.topic_partitions, **settings.kafka_config())
        daemon = build(settings, bootstrap)
        print(f"pakit-stream serving on http://{settings.web_host}:{settings.web_port}", flush=True)
        if daemon.replicas is not None:
            print(f"hint replicas serving on http://{settings.web_host}:{daemon.replicas.port}",
                  flush=True)
        worker = faust.Worker(daemon.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit:  # how Faust's worker says it stopped (SIGINT, SIGTERM)
            pass
        finally:
            if daemon.replicas is not None:
                daemon.replicas.stop()
            size = daemon.final_checkpoint()
            if size is None:  # a message was cut off between two of its slices
                log.warning("no final checkpoint: a message was stopped half applied; the last "
                            "periodic checkpoint stands and its messages are replayed")
            else:
                log.info("final checkpoint written (%d bytes)", size)
