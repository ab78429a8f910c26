"""Is a saved offset still a position in the log it was saved from?

A checkpoint's offsets are positions in partition logs. A Kafka cluster keeps its logs through
broker restarts, but the embedded broker keeps them in memory: restarted, it starts from empty
logs under the same topic names, and a saved offset then points into a log that no longer
exists. Resuming there would skip the new log's first messages (everything below the old
offset) without an error, since tansu answers a fetch past the end with nothing rather than
``OFFSET_OUT_OF_RANGE``, and it has neither topic ids nor leader epochs to tell two logs apart.

So the daemon checks what it can see. For a partition resumed at offset ``o``, whose message at
``o - 1`` it applied, :func:`probe` reads the record at ``o - 1`` and :func:`judge` compares:

* the record is there and its CRC-32 is the one the pipeline kept: the log is the same;
* the record differs, or the log ends before ``o`` (fetch high-watermark below ``o``): the log
  was recreated, and the partition is read again from its start;
* the first record is after ``o - 1`` (retention or compaction removed it): the same log, which
  cannot be checked further; resume at ``o``.

The lag timer applies the second rule all the time: a fetch high-watermark below the applied
offset means the log shrank, which a log only does when it was recreated.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["Verdict", "judge", "probe", "shrank"]


def shrank(highwater: int | None, offset: int) -> bool:
    """Does the log end (fetch ``highwater``) before ``offset``, a position already read in
    it? A log never shrinks, so it was recreated.

    >>> shrank(3, 42), shrank(42, 42), shrank(None, 42)
    (True, False, False)
    """
    return highwater is not None and highwater < offset


class Verdict(str, Enum):
    SAME = "same"  #: the record before the offset is the one applied
    RECREATED = "recreated"  #: a different record, or a log shorter than the offset
    UNCHECKED = "unchecked"  #: nothing to compare (no record seen, or it was removed)


def judge(offset: int, tail: int | None, record: tuple[int, bytes | None] | None,
          highwater: int | None) -> Verdict:
    """The verdict for a partition resumed at ``offset``, whose last applied message had CRC-32
    ``tail``, given the first ``record`` (offset, value) read from ``offset - 1`` and the
    partition's fetch ``highwater``.

    >>> crc = zlib.crc32(b"e41")
    >>> judge(42, crc, (41, b"e41"), 50).value, judge(42, crc, (41, b"new"), 50).value
    ('same', 'recreated')
    >>> judge(42, crc, None, 3).value, judge(42, crc, (45, b"x"), 50).value
    ('recreated', 'unchecked')
    """
    if record is not None:
        found, value = record
        if found == offset - 1:
            if tail is None:
                return Verdict.UNCHECKED
            return Verdict.SAME if zlib.crc32(value or b"") == tail else Verdict.RECREATED
        if found < offset - 1:  # a consumer reset to an earlier start: the log is shorter
            return Verdict.RECREATED
        return Verdict.UNCHECKED
    return Verdict.RECREATED if shrank(highwater, offset) else Verdict.UNCHECKED


async def probe(bootstrap: str, positions: Mapping[Any, int], timeout: float = 5.0,
                **client_config) -> dict[Any, tuple[tuple[int, bytes | None] | None, int | None]]:
    """For each partition (anything with ``topic`` and ``partition``, as Faust's ``TP``) and
    resume offset, the first record at or after ``offset - 1`` and the fetch high-watermark,
    read outside any consumer group.

    A partition for which the broker answered neither within ``timeout`` maps to
    ``(None, None)``; :func:`judge` calls that unchecked.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    result: dict[Any, tuple[tuple[int, bytes | None] | None, int | None]] = {
        tp: (None, None) for tp in positions}
    if not positions:
        return result
    own = {TopicPartition(tp.topic, tp.partition): tp for tp in positions}  # from Faust's TPs
    positions = {tp: positions[theirs] for tp, theirs in own.items()}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                **client_config)
    await consumer.start()
    try:
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, max(offset - 1, 0))
        pending = set(positions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending))
            for tp, records in batches.items():
                if records and tp in pending:
                    result[own[tp]] = ((records[0].offset, records[0].value), consumer.highwater(tp))
                    pending.discard(tp)
            for tp in list(pending):
                if shrank(consumer.highwater(tp), positions[tp]):  # no record to wait for
                    result[own[tp]] = (None, consumer.highwater(tp))
                    pending.discard(tp)
            await asyncio.sleep(0)
        return result
    finally:
        await consumer.stop()
