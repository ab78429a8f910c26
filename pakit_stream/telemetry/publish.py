"""Envelopes onto Kafka with kafka-python: shared by the collector, ``replay`` and the demo."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec

from pakit_stream.events.schema import TOPIC_OF
from pakit_stream.exceptions import ConfigError, InvalidEventError

__all__ = ["make_producer", "envelope", "publish_events", "encoded", "read_jsonl", "publish_jsonl",
           "group_by_topic"]


def make_producer(bootstrap: str, **overrides):
    """A kafka-python producer tuned for envelopes: acks from the leader, small linger."""
    from kafka import KafkaProducer

    config = dict(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5,
                  max_request_size=16 << 20, max_block_ms=5000, request_timeout_ms=10000,
                  reconnect_backoff_max_ms=2000, client_id="pakit-stream-node")
    config.update(overrides)
    # kafka-python waits 30 s for a first bootstrap by default; a node must not block that long
    config.setdefault("bootstrap_timeout_ms", config["max_block_ms"])
    return KafkaProducer(**config)


def envelope(payloads: Sequence[bytes]) -> bytes:
    """``{"events": [...]}`` around already-encoded JSON events, without re-encoding them."""
    return b'{"events":[' + b",".join(payloads) + b"]}"


def publish_events(events: Iterable[tuple[str, bytes]], bootstrap: str | None,
                   batch_size: int = 500, **client_config) -> int:
    """Publish ``(event_type, encoded JSON event)`` pairs, one envelope per ``batch_size``
    events of a topic. Events are forwarded as they are: the daemon validates them and
    dead-letters the bad ones. ``client_config``: security arguments
    (:meth:`~pakit_stream.settings.Settings.kafka_config`). Returns the events published."""
    if not bootstrap:
        raise ConfigError("replay needs --broker HOST:PORT (or PAKIT_STREAM_BROKER)")
    producer = make_producer(bootstrap, **client_config)
    pending: dict[str, list[bytes]] = defaultdict(list)
    sent = 0

    def drain(topic: str) -> None:
        nonlocal sent
        producer.send(topic, envelope(pending[topic]))
        sent += len(pending[topic])
        pending[topic].clear()

    try:
        for event_type, payload in events:
            topic = TOPIC_OF.get(event_type)
            if topic is None:
                raise InvalidEventError(f"unknown event_type {event_type!r}")
            pending[topic].append(payload)
            if len(pending[topic]) >= batch_size:
                drain(topic)
        for topic in list(pending):
            if pending[topic]:
                drain(topic)
        producer.flush()
    finally:
        producer.close()
    return sent


def encoded(events: Iterable[dict]) -> Iterator[tuple[str, bytes]]:
    """Event dicts as ``(event_type, JSON bytes)`` for :func:`publish_events`."""
    encode = msgspec.json.encode
    for e in events:
        yield e["event_type"], encode(e)


def read_jsonl(path: Path) -> Iterator[tuple[str, bytes]]:
    """A JSONL file of events as ``(event_type, line)``; only ``event_type`` is read."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                event_type = str(json.loads(line).get("event_type", "")).lower()
            except (ValueError, AttributeError):
                raise InvalidEventError(f"{path}:{lineno}: not a JSON object") from None
            if event_type not in TOPIC_OF:
                raise InvalidEventError(f"{path}:{lineno}: unknown event_type {event_type!r}")
            yield event_type, line


def publish_jsonl(path: Path, bootstrap: str | None, batch_size: int = 500,
                  **client_config) -> int:
    """Publish a JSONL file of events as envelopes (see :func:`publish_events`)."""
    return publish_events(read_jsonl(path), bootstrap, batch_size, **client_config)


def group_by_topic(items: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in items:
        out[topic].append(payload)
    return out
