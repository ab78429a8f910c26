"""Envelopes onto Kafka with kafka-python: shared by the collector, ``replay`` and the demo."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pakit_stream.events.schema import TOPIC_OF

__all__ = ["make_producer", "envelope", "publish_jsonl", "group_by_topic"]


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


def publish_jsonl(path: Path, bootstrap: str | None, batch_size: int = 500) -> int:
    """Publish a JSONL file of events, one envelope per ``batch_size`` events of a topic.

    Lines are forwarded as they are (the daemon validates them and dead-letters the bad ones);
    only the ``event_type`` is read, to pick the topic. Returns the events published.
    """
    if not bootstrap:
        raise SystemExit("replay needs --broker HOST:PORT (or PAKIT_STREAM_BROKER)")
    producer = make_producer(bootstrap)
    pending: dict[str, list[bytes]] = defaultdict(list)
    sent = 0

    def drain(topic: str) -> None:
        nonlocal sent
        producer.send(topic, envelope(pending[topic]))
        sent += len(pending[topic])
        pending[topic].clear()

    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                event_type = str(json.loads(line).get("event_type", "")).lower()
            except (ValueError, AttributeError):
                raise SystemExit(f"{path}:{lineno}: not a JSON object") from None
            topic = TOPIC_OF.get(event_type)
            if topic is None:
                raise SystemExit(f"{path}:{lineno}: unknown event_type {event_type!r}")
            pending[topic].append(line)
            if len(pending[topic]) >= batch_size:
                drain(topic)
    for topic in list(pending):
        if pending[topic]:
            drain(topic)
    producer.flush()
    producer.close()
    return sent


def group_by_topic(items: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for topic, payload in items:
        out[topic].append(payload)
    return out
