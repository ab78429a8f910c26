"""The daemon: one worker of the consumer group, what it reads, when it acts, what it serves.

* :mod:`~pakit_stream.daemon.run` starts it: the broker (embedded unless one is configured),
  the state restored from its checkpoint, the Faust worker, and a final checkpoint on the way
  out;
* :mod:`~pakit_stream.daemon.core`: the :class:`Daemon` object, which holds the pipeline,
  its checkpoints, the retrainer, the hint service and the Faust app, and wires the rest;
* :mod:`~pakit_stream.daemon.agents`: one agent per telemetry topic, the reader of the global
  topics, and the dead letters;
* :mod:`~pakit_stream.daemon.timers`: checkpoints, consumer lag, event-loop lag, retraining and
  canary decisions;
* :mod:`~pakit_stream.daemon.rebalance`: where each assigned partition resumes;
* :mod:`~pakit_stream.daemon.replication`: batch models from the leader to every worker;
* :mod:`~pakit_stream.daemon.views`: the HTTP API, with hints about another worker's nodes
  forwarded to their owner.

Nothing here imports Faust until the daemon is built, so that ``run_daemon`` can choose the
event loop first.
"""

from pakit_stream.daemon.run import build, run_daemon

__all__ = ["Daemon", "build", "run_daemon"]


def __getattr__(name: str):
    if name == "Daemon":
        from pakit_stream.daemon.core import Daemon

        return Daemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
