"""The node side: record content-free events, spool them to SQLite, publish them in envelopes.

``record()`` validates an event against the contract (refusing anything that could carry
content), stores it in a local SQLite spool and, when a broker is configured, publishes pending
events in envelopes. A row is marked sent only once the broker acknowledged its envelope, so a
broker outage loses nothing: the rows wait in the spool and go out on a later flush.

>>> import tempfile, os
>>> c = TelemetryCollector(db_path=os.path.join(tempfile.mkdtemp(), "t.db"), node_id="node-a")
>>> _ = c.record(event_type="BLOCK_ACCESSED", block_hash="ab" * 32, cache_hit=True, latency_ms=0.3)
>>> [e["event_type"] for e in c.get_events(event_type="BLOCK_ACCESSED")], c.pending()
(['block_accessed'], 1)
>>> c.record(event_type="block_accessed", block_hash="ab" * 32, cache_hit=True, latency_ms=1,
...          content=b"secret")
Traceback (most recent call last):
...
pakit_stream.exceptions.PrivacyViolation: field `content` holds raw bytes: events are content-free
"""

from __future__ import annotations

import logging
import secrets
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from pakit_stream.events.decode import classify_error
from pakit_stream.events.schema import (EVENT_TYPES, MAX_ENVELOPE_EVENTS, TOPIC_OF, Event,
                                        wire_type)
from pakit_stream.exceptions import InvalidEventError, PrivacyViolation, UsageError
from pakit_stream.telemetry.publish import envelope, group_by_topic, make_producer

__all__ = ["TelemetryCollector"]

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    ts REAL NOT NULL,
    payload BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS spool_unsent ON spool (sent, id);
CREATE INDEX IF NOT EXISTS spool_type ON spool (event_type, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _listening(bootstrap: str) -> bool:
    """Whether any bootstrap server accepts a TCP connection. Checked before building a
    producer: a kafka-python client built against a dead address blocks, then leaks sockets."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except (OSError, ValueError):
            continue
    return False


def _chunks(items: list[tuple[int, bytes]], max_events: int, max_bytes: int):
    """``items`` cut into runs of at most ``max_events`` whose envelope is at most
    ``max_bytes`` (each event fits one alone: ``record()`` checks it).

    >>> [len(c) for c in _chunks([(i, b"x" * 10) for i in range(7)], 3, 40)]
    [2, 2, 2, 1]
    """
    chunk: list[tuple[int, bytes]] = []
    size = len(envelope([]))
    for item in items:
        extra = len(item[1]) + (1 if chunk else 0)  # the comma between two events
        if chunk and (len(chunk) >= max_events or size + extra > max_bytes):
            yield chunk
            chunk, size, extra = [], len(envelope([])), len(item[1])
        chunk.append(item)
        size += extra
    if chunk:
        yield chunk


class TelemetryCollector:
    """Validated, spooled, batched telemetry of one node.

    Parameters
    ----------
    db_path
        The SQLite spool.
    node_id
        This node's id in events; by default a random id kept in the spool, so it is stable
        across restarts and reveals nothing about the machine.
    broker
        Kafka ``HOST:PORT``; ``None`` spools only.
    batch_size
        Events per envelope (at most ``MAX_ENVELOPE_EVENTS``, the most the daemon accepts in
        one message), and pending events that trigger a flush.
    max_envelope_bytes
        Bytes per envelope at most: envelopes are cut by count and by size. The default stays
        under Kafka's default ``message.max.bytes`` (1,048,588); give the broker's limit (or
        the daemon's ``PAKIT_STREAM_MAX_MESSAGE_BYTES``) when it is smaller. An event that
        alone would exceed it is refused by ``record()``: no broker would ever take it.
    flush_interval_s
        ``record()`` also flushes when this long has passed since the last flush.
    keep_sent
        Sent rows kept for ``get_events`` (older ones are deleted).
    """

    def __init__(self, db_path: str | Path = "telemetry.db", *, node_id: str | None = None,
                 broker: str | None = None, batch_size: int = 500, flush_interval_s: float = 1.0,
                 keep_sent: int = 100_000, producer_config: dict[str, Any] | None = None,
                 max_envelope_bytes: int = 1_000_000) -> None:
        self.db_path = Path(db_path)
        if not 0 < batch_size <= MAX_ENVELOPE_EVENTS:
            raise UsageError(f"batch_size must be in 1..{MAX_ENVELOPE_EVENTS} (the daemon refuses "
                             f"larger envelopes), got {batch_size}")
        if max_envelope_bytes < 1024:
            raise UsageError(f"max_envelope_bytes must be at least 1024, got {max_envelope_bytes}")
        self.max_envelope_bytes = max_envelope_bytes
        self.broker, self.batch_size = broker, batch_size
        self.flush_interval_s, self.keep_sent = flush_interval_s, keep_sent
        self._producer_config = producer_config or {}
        self._producer = None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.node_id = node_id or self._stable_node_id()
        self._last_flush = time.monotonic()
        self._pending = self._count_unsent()

    def _stable_node_id(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key='node_id'").fetchone()
        if row:
            return row[0]
        node_id = "node-" + secrets.token_hex(6)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('node_id', ?)", (node_id,))
        return self._db.execute("SELECT value FROM meta WHERE key='node_id'").fetchone()[0]

    def _count_unsent(self) -> int:
        return self._db.execute("SELECT count(*) FROM spool WHERE sent=0").fetchone()[0]

    # -- recording ---------------------------------------------------------------------------
    def validate(self, event_type: str, **fields) -> Event:
        """The event as the contract sees it; raises InvalidEventError / PrivacyViolation."""
        kind = str(event_type).lower()
        cls = EVENT_TYPES.get(kind)
        if cls is None:
            raise InvalidEventError(f"unknown event_type {event_type!r}; one of {sorted(EVENT_TYPES)}")
        fields.setdefault("node_id", self.node_id)
        fields.setdefault("ts", time.time())
        for name, value in fields.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise PrivacyViolation(f"field `{name}` holds raw bytes: events are content-free")
        try:
            return msgspec.convert({"event_type": kind, **fields}, type=wire_type(cls))
        except msgspec.ValidationError as exc:
            category, reason = classify_error(str(exc))
            raise (PrivacyViolation if category == "privacy" else InvalidEventError)(reason) from None

    def record(self, event_type: str, **fields) -> Event:
        """Validate and spool one event (guide spellings like ``'BLOCK_STORED'`` accepted)."""
        event = self.validate(event_type, **fields)
        kind = type(event).__struct_config__.tag
        payload = _encode(event)
        if len(envelope([payload])) > self.max_envelope_bytes:
            raise InvalidEventError(f"a {kind} event of {len(payload)} bytes does not fit an "
                                    f"envelope of max_envelope_bytes={self.max_envelope_bytes}")
        with self._lock:
            self._db.execute("INSERT INTO spool (event_type, ts, payload) VALUES (?, ?, ?)",
                             (kind, event.ts, payload))
            self._pending += 1
            due = (self._pending >= self.batch_size
                   or time.monotonic() - self._last_flush >= self.flush_interval_s)
        if self.broker and due:
            self.flush()
        return event

    def pending(self) -> int:
        """Events spooled but not yet acknowledged by a broker."""
        with self._lock:
            return self._count_unsent()

    # -- publishing --------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0, max_events: int = 100_000) -> int:
        """Publish pending events; returns how many the broker acknowledged."""
        if not self.broker:
            return 0
        with self._lock:
            self._last_flush = time.monotonic()
            rows = self._db.execute(
                "SELECT id, event_type, payload FROM spool WHERE sent=0 ORDER BY id LIMIT ?",
                (max_events,)).fetchall()
            if not rows:
                return 0
            if self._producer is None and not _listening(self.broker):
                log.warning("broker %s unreachable, %d events stay spooled", self.broker, len(rows))
                return 0
            try:
                producer = self._producer or make_producer(self.broker, **self._producer_config)
                self._producer = producer
            except Exception as exc:
                log.warning("broker %s unreachable, %d events stay spooled: %s",
                            self.broker, len(rows), exc)
                return 0
            by_topic = group_by_topic((TOPIC_OF[kind], (rid, payload)) for rid, kind, payload in rows)
            key = self.node_id.encode()
            batches = []
            try:
                for topic, items in by_topic.items():
                    for chunk in _chunks(items, self.batch_size, self.max_envelope_bytes):
                        future = producer.send(topic, key=key, value=envelope([p for _, p in chunk]))
                        batches.append((future, [rid for rid, _ in chunk]))
                producer.flush(timeout=timeout)
            except Exception as exc:
                log.warning("publishing to %s failed, events stay spooled: %s", self.broker, exc)
            acked = [rid for future, ids in batches if future.is_done and future.succeeded()
                     for rid in ids]
            if len(acked) < len(rows):
                # A producer that failed may sit in a long reconnect backoff holding stale
                # metadata (a restarted broker may have recreated its topics): start afresh.
                # Unacknowledged rows stay spooled; delivery is at-least-once.
                self._close_producer(timeout=1)
            if acked:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE spool SET sent=1 WHERE id=?", [(i,) for i in acked])
                self._db.execute("COMMIT")
                self._trim()
            self._pending = self._count_unsent()
            return len(acked)

    def _trim(self) -> None:
        self._db.execute(
            "DELETE FROM spool WHERE sent=1 AND id <= (SELECT id FROM spool WHERE sent=1 "
            "ORDER BY id DESC LIMIT 1 OFFSET ?)", (self.keep_sent,))

    # -- reading back ------------------------------------------------------------------------
    def get_events(self, event_type: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The most recent ``limit`` events (of one type, if given), oldest first."""
        with self._lock:
            if event_type is None:
                rows = self._db.execute("SELECT payload FROM spool ORDER BY id DESC LIMIT ?",
                                        (limit,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT payload FROM spool WHERE event_type=? ORDER BY id DESC LIMIT ?",
                    (str(event_type).lower(), limit)).fetchall()
        return [_decode(p) for (p,) in reversed(rows)]

    def _close_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout)
            return
        except Exception:
            log.debug("producer close failed; forcing it", exc_info=True)
        # kafka-python's close() flushes first and raises while records are pending (the
        # broker is gone), skipping the rest of its shutdown and leaving its network thread
        # running. Force the sender down (it aborts those batches; their rows stay spooled).
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(max(timeout, 1.0))
        try:
            producer.close(timeout=0)
        except Exception:
            log.warning("kafka producer did not close cleanly", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._close_producer(timeout=5)
            self._db.close()

    def __enter__(self) -> TelemetryCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
