"""Nodes in other languages reach Kafka through librdkafka (confluent-kafka, confluent-kafka-go,
the Rust ``rdkafka`` crate, kcat): confluent-kafka against the embedded broker and a daemon."""

import time

import pytest

from pakit_stream.events.schema import DLQ_TOPIC, TOPIC_OF

from . import events as ev
from .conftest import PARTITIONS

confluent_kafka = pytest.importorskip("confluent_kafka")


def consumer(bootstrap: str, **config):
    return confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "pakit-test",
                                     "enable.auto.commit": False,
                                     "auto.offset.reset": "earliest", **config})


def poll(c, expected: int, timeout: float) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None:
            assert m.error() is None, m.error()
            messages.append(m)
    return messages


def test_librdkafka_produces_what_the_daemon_applies_and_reads_its_dead_letters(
        broker, daemon_factory):
    daemon = daemon_factory()
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    failed = []

    def delivered(err, _message):
        if err is not None:
            failed.append(err)

    access, stored = TOPIC_OF["block_accessed"], TOPIC_OF["block_stored"]
    good = {access: [ev.accessed(i) for i in range(5)], stored: [ev.stored(i) for i in range(3)]}
    bad = {b"\x00\xff\xfegarbage": "malformed JSON",
           ev.raw(dict(ev.accessed(9), cache_hit="yes")): "Expected `bool`"}
    for topic, events in good.items():
        producer.produce(topic, ev.pack(events), key=b"node-a", on_delivery=delivered)
    for value in bad:
        producer.produce(access, value, key=b"node-a", on_delivery=delivered)
    assert producer.flush(10) == 0 and not failed

    health = daemon.wait_applied({topic: len(events) for topic, events in good.items()})
    assert all(health["applied"][t] == len(events) for t, events in good.items())

    # by assignment: at once
    reader = consumer(broker.bootstrap)
    reader.assign([confluent_kafka.TopicPartition(DLQ_TOPIC, p, confluent_kafka.OFFSET_BEGINNING)
                   for p in range(PARTITIONS)])
    try:
        letters = poll(reader, len(bad), timeout=15)
    finally:
        reader.close()
    reasons = {m.value(): dict(m.headers())["pakit-reason"].decode() for m in letters}
    assert reasons.keys() == bad.keys()
    for value, reason in bad.items():
        assert reason in reasons[value]

    # in a group: tansu hands out the assignment only after about half of session.timeout.ms
    # (23 s at librdkafka's default 45 s), so a group member asks for the broker's least, 6 s
    member = consumer(broker.bootstrap, **{"group.id": "pakit-test-group",
                                           "session.timeout.ms": 6000})
    member.subscribe([DLQ_TOPIC])
    try:
        first = poll(member, 1, timeout=15)
    finally:
        member.close()
    assert first and first[0].value() in bad, "no dead letter reached a group member in 15 s"
