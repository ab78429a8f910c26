"""The node side: record content-free events, spool them to SQLite, publish them in envelopes.

``record()`` validates an event against the contract (refusing anything that could carry
content), stores it in a local SQLite spool and returns: it never waits on the network. When a
broker is configured, a background thread publishes pending events in envelopes, and
``flush()`` publishes now and waits. A row is marked sent only once the broker acknowledged its
envelope, so a broker outage loses nothing: the rows wait in the spool, the thread retries
with a growing backoff, and they go out once the broker answers.

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

    ``record()`` only writes to the spool. With a broker, a daemon thread (started by the first
    ``record()``, or at once when the spool holds unsent rows) publishes whole envelopes as soon
    as ``batch_size`` events are pending, and everything pending once ``flush_interval_s`` has
    passed since the last publish; after a failed publish it waits ``retry_min_s``, doubling up
    to ``retry_max_s``. ``flush()`` publishes at once and waits for the broker. One lock lets a
    single publisher at a time own the producer and the rows it sends, so no row is sent by two
    publishers at once; ``record()`` never takes it.

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
        one message), and pending events that wake the publishing thread.
    max_envelope_bytes
        Bytes per envelope at most: envelopes are cut by count and by size. The default stays
        under Kafka's default ``message.max.bytes`` (1,048,588); give the broker's limit (or
        the daemon's ``PAKIT_STREAM_MAX_MESSAGE_BYTES``) when it is smaller. An event that
        alone would exceed it is refused by ``record()``: no broker would ever take it.
    flush_interval_s
        The publishing thread sends whatever is pending when this long has passed since the
        last publish.
    keep_sent
        Sent rows kept for ``get_events`` (older ones are deleted).
    retry_min_s, retry_max_s
        The publishing thread's backoff after a publish the broker did not fully acknowledge.
    """

    def __init__(self, db_path: str | Path = "telemetry.db", *, node_id: str | None = None,
                 broker: str | None = None, batch_size: int = 500, flush_interval_s: float = 1.0,
                 keep_sent: int = 100_000, producer_config: dict[str, Any] | None = None,
                 max_envelope_bytes: int = 1_000_000, retry_min_s: float = 0.5,
                 retry_max_s: float = 10.0) -> None:
        self.db_path = Path(db_path)
        if not 0 < batch_size <= MAX_ENVELOPE_EVENTS:
            raise UsageError(f"batch_size must be in 1..{MAX_ENVELOPE_EVENTS} (the daemon refuses "
                             f"larger envelopes), got {batch_size}")
        if max_envelope_bytes < 1024:
            raise UsageError(f"max_envelope_bytes must be at least 1024, got {max_envelope_bytes}")
        if not 0 < retry_min_s <= retry_max_s:
            raise UsageError(f"need 0 < retry_min_s <= retry_max_s, got {retry_min_s} and "
                             f"{retry_max_s}")
        self.max_envelope_bytes = max_envelope_bytes
        self.broker, self.batch_size = broker, batch_size
        self.flush_interval_s, self.keep_sent = flush_interval_s, keep_sent
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._producer_config = producer_config or {}
        self._producer = None
        # _lock guards the connection and the counters, held only for quick statements;
        # _publish_lock is held by the one publisher (thread or flush) through network I/O.
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._wake, self._closing = threading.Event(), threading.Event()
        self._publisher: threading.Thread | None = None
        self._failures = 0
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.node_id = node_id or self._stable_node_id()
        self._last_publish = time.monotonic()
        self._pending = self._count_unsent()
        if self._pending:  # left by a previous run: send it without waiting for a record
            self._start_publisher()

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
        """Validate and spool one event (guide spellings like ``'BLOCK_STORED'`` accepted);
        the publishing thread sends it."""
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
            # the first pending row starts the interval's clock; a full envelope is due now
            wake = self._pending == 1 or self._pending >= self.batch_size
        if self.broker:
            if self._publisher is None:
                self._start_publisher()
            if wake:
                self._wake.set()
        return event

    def pending(self) -> int:
        """Events spooled but not yet acknowledged by a broker."""
        with self._lock:
            return self._count_unsent()

    # -- publishing --------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0, max_events: int = 100_000) -> int:
        """Publish pending events now and wait for the broker; returns how many it
        acknowledged. Waits for a publish the thread has under way (whose rows are then no
        longer pending): ``while flush() or pending()`` ends with everything sent."""
        if not self.broker:
            return 0
        return self._publish(max_events, timeout)

    def _publish(self, max_events: int, timeout: float) -> int:
        with self._publish_lock:
            with self._lock:
                self._last_publish = time.monotonic()
                rows = self._db.execute(
                    "SELECT id, event_type, payload FROM spool WHERE sent=0 ORDER BY id LIMIT ?",
                    (max_events,)).fetchall()
                if not rows:
                    self._pending = 0
                    return 0
            acked = self._send(rows, timeout)
            with self._lock:
                if acked:
                    self._db.execute("BEGIN")
                    self._db.executemany("UPDATE spool SET sent=1 WHERE id=?",
                                         [(i,) for i in acked])
                    self._db.execute("COMMIT")
                    self._trim()
                self._pending = self._count_unsent()
            self._failures = 0 if len(acked) == len(rows) else self._failures + 1
            return len(acked)

    def _send(self, rows: list[tuple[int, str, bytes]], timeout: float) -> list[int]:
        """The ids of ``rows`` whose envelopes the broker acknowledged (publish lock held)."""
        producer = self._connect(len(rows))
        if producer is None:
            return []
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
        return acked

    def _connect(self, waiting: int):
        if self._producer is None and not _listening(self.broker):
            log.warning("broker %s unreachable, %d events stay spooled", self.broker, waiting)
            return None
        try:
            self._producer = self._producer or make_producer(self.broker, **self._producer_config)
        except Exception as exc:
            log.warning("broker %s unreachable, %d events stay spooled: %s",
                        self.broker, waiting, exc)
        return self._producer

    def _start_publisher(self) -> None:
        with self._lock:
            if self._publisher is not None or self._closing.is_set():
                return
            self._publisher = threading.Thread(target=self._publish_in_background, daemon=True,
                                               name=f"pakit-stream-publisher-{self.node_id}")
        self._publisher.start()

    def _due(self) -> tuple[int, float | None]:
        """How many rows to publish now, and otherwise how long to sleep (``None``: until
        ``record()`` wakes the thread)."""
        with self._lock:
            pending, idle = self._pending, time.monotonic() - self._last_publish
        if not pending:
            return 0, None
        if idle >= self.flush_interval_s:
            return pending, None
        # only whole envelopes before the interval: a full one does not drag a partial one
        return pending - pending % self.batch_size, self.flush_interval_s - idle

    def _publish_in_background(self) -> None:
        while not self._closing.is_set():
            try:
                count, sleep = self._due()
                if not count:
                    self._wake.wait(sleep)
                    self._wake.clear()
                    continue
                self._publish(count, timeout=10.0)
            except Exception:  # the thread must outlive any one failure
                log.exception("publishing in the background failed")
                self._failures += 1
            if self._failures:  # backoff, cut short only by close()
                self._closing.wait(min(self.retry_max_s,
                                       self.retry_min_s * 2 ** min(self._failures - 1, 16)))

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

    def close(self, timeout: float = 5.0) -> None:
        """Stop the publishing thread, try one last flush, and close the spool."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        if self._publisher is not None:
            self._publisher.join()  # a publish under way ends within its own timeouts
        if self.broker:
            self.flush(timeout=timeout)
        with self._publish_lock:
            self._close_producer(timeout=timeout)
        with self._lock:
            self._db.close()

    def __enter__(self) -> TelemetryCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
