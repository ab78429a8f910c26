from __future__ import annotations

import gc
import time

import pytest

from pakit_stream.broker import EmbeddedBroker, create_topics
from pakit_stream.demo import DaemonProcess
from pakit_stream.telemetry.publish import make_producer

PARTITIONS = 2


@pytest.fixture(autouse=True)
def _reap_garbage():
    """Collect after each test, so a leaked socket is reported against the test that leaked it
    (warnings are errors) instead of at interpreter exit."""
    yield
    gc.unfreeze()  # an in-process checkpoint freezes what lives; thaw it so it can be reaped
    gc.collect()


@pytest.fixture
def broker(tmp_path):
    """A fresh embedded tansu broker, with the telemetry topics, per test."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as b:
        create_topics(b.bootstrap, PARTITIONS)
        yield b


@pytest.fixture
def producer(broker):
    p = make_producer(broker.bootstrap)
    yield p
    p.close(timeout=5)


@pytest.fixture
def daemon_factory(broker, tmp_path):
    """Start ``pakit-stream run`` subprocesses against the test broker; stops them after."""
    started: list[DaemonProcess] = []

    def start(data_dir=None, **env) -> DaemonProcess:
        env = {"PAKIT_STREAM_TOPIC_PARTITIONS": str(PARTITIONS),
               **{k: str(v) for k, v in env.items()}}
        d = DaemonProcess(broker.bootstrap, data_dir or tmp_path / "store", env=env)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.kill()


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0,
               partitions: int = PARTITIONS):
    """Every record of ``topic`` (no consumer group: kafka-python groups hang on tansu)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records
