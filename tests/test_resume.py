"""Telling a recreated log from the one a checkpoint was taken on, against the real broker."""

import asyncio
import zlib

from aiokafka import TopicPartition

from pakit_stream.broker import EmbeddedBroker, ensure_topics, free_port
from pakit_stream.resume import Verdict, judge, probe
from pakit_stream.telemetry.publish import make_producer


def fill(bootstrap: str, values: list[bytes]) -> None:
    producer = make_producer(bootstrap)
    for value in values:
        producer.send("t", value=value, partition=0)
    producer.flush()
    producer.close()


def verdict(bootstrap: str, offset: int, tail: int) -> Verdict:
    tp = TopicPartition("t", 0)
    record, high = asyncio.run(probe(bootstrap, {tp: offset}, timeout=5))[tp]
    return judge(offset, tail, record, high)


def test_the_record_before_the_offset_tells_the_same_log_from_a_recreated_one():
    port = free_port()
    first = [f"first-{i}".encode() for i in range(10)]
    applied_to, tail = 6, zlib.crc32(first[5])  # a checkpoint after offsets 0..5
    with EmbeddedBroker(port=port) as b:
        ensure_topics(b.bootstrap, ["t"], 1)
        fill(b.bootstrap, first)
        assert verdict(b.bootstrap, applied_to, tail) is Verdict.SAME
    with EmbeddedBroker(port=port) as b:  # restarted empty, topic recreated
        ensure_topics(b.bootstrap, ["t"], 1)
        assert verdict(b.bootstrap, applied_to, tail) is Verdict.RECREATED  # empty
        fill(b.bootstrap, [b"second-0", b"second-1"])
        assert verdict(b.bootstrap, applied_to, tail) is Verdict.RECREATED  # shorter
        fill(b.bootstrap, [f"second-{i}".encode() for i in range(2, 12)])
        assert verdict(b.bootstrap, applied_to, tail) is Verdict.RECREATED  # longer, different
