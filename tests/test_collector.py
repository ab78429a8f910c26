import json
import socket
import time

import pytest

from pakit_stream.broker import EmbeddedBroker, create_topics, free_port
from pakit_stream.exceptions import InvalidEventError, PrivacyViolation
from pakit_stream.telemetry import TelemetryCollector

from . import events as ev
from .conftest import read_topic


def record_accesses(collector, start, n):
    for i in range(start, start + n):
        fields = ev.accessed(i)
        fields["block_hash"] = ev.block_hash(i)
        del fields["event_type"]
        collector.record(event_type="BLOCK_ACCESSED", **fields)


def hashes_in(records):
    return {e["block_hash"] for r in records for e in json.loads(r.value)["events"]}


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_spool_validates_and_reads_back(tmp_path):
    with TelemetryCollector(tmp_path / "t.db", node_id="node-z") as c:
        c.record(event_type="BLOCK_STORED", block_hash=ev.block_hash(1), block_size=10000,
                 block_depth=5, compression_algorithm="zstd", compression_ratio=0.5)
        record_accesses(c, 0, 3)
        with pytest.raises(PrivacyViolation):
            c.record(event_type="block_stored", block_hash="abc123...", block_size=1,
                     block_depth=0, compression_algorithm="zstd", compression_ratio=1.0)
        with pytest.raises(InvalidEventError, match="unknown event_type"):
            c.record(event_type="BLOCK_DELETED", block_hash=ev.block_hash(1))
        with pytest.raises(PrivacyViolation, match="raw bytes"):
            c.record(event_type="block_accessed", block_hash=ev.block_hash(1), cache_hit=True,
                     latency_ms=1, sample=b"\x00\x01")
        stored = c.get_events(event_type="BLOCK_STORED", limit=10)
        assert len(stored) == 1 and stored[0]["node_id"] == "node-z"
        assert stored[0]["event_type"] == "block_stored" and "ts" in stored[0]
        assert [e["block_hash"] for e in c.get_events("block_accessed", limit=2)] == [
            ev.block_hash(1), ev.block_hash(2)]
        assert c.pending() == 4


def test_envelopes_are_no_larger_than_the_daemon_accepts(tmp_path):
    with pytest.raises(ValueError, match="1..10000"):
        TelemetryCollector(tmp_path / "t.db", batch_size=10_001)
    assert not (tmp_path / "t.db").exists()


def test_node_id_is_random_but_stable(tmp_path):
    with TelemetryCollector(tmp_path / "t.db") as c:
        first = c.node_id
    with TelemetryCollector(tmp_path / "t.db") as c:
        assert c.node_id == first and first.startswith("node-")


def test_publishes_envelopes_and_marks_them_sent(broker, tmp_path):
    with TelemetryCollector(tmp_path / "t.db", broker=broker.bootstrap, batch_size=10,
                            flush_interval_s=3600) as c:
        record_accesses(c, 0, 25)  # two full envelopes go out on their own
        wait_for(lambda: c.pending() == 5)
        time.sleep(0.3)  # and the partial one waits for the interval, or a flush
        assert c.pending() == 5
        assert c.flush() == 5 and c.pending() == 0
    records = read_topic(broker.bootstrap, "pakit.access", 3)
    assert len(records) == 3 and all(r.key == c.node_id.encode() for r in records)
    assert hashes_in(records) == {ev.block_hash(i) for i in range(25)}


def test_envelopes_are_cut_by_bytes_under_the_brokers_limit(broker, tmp_path):
    """500 fetches with long candidate lists once made one envelope over Kafka's 1 MB limit,
    refused forever; envelopes are now cut by size as well as by count."""
    limit = 4096
    with TelemetryCollector(tmp_path / "t.db", broker=broker.bootstrap, batch_size=500,
                            flush_interval_s=3600, max_envelope_bytes=limit) as c:
        peers = [f"peer-{i:04d}" for i in range(60)]  # about 900 bytes per event
        for i in range(40):
            fields = dict(ev.peer_fetch(i), candidates=peers, peer_id=peers[i % 60])
            del fields["event_type"]
            c.record(event_type="peer_fetch", **fields)
        assert c.flush() == 40 and c.pending() == 0
        with pytest.raises(InvalidEventError, match="does not fit an envelope"):
            huge = dict(ev.peer_fetch(99), candidates=[f"peer-{i:04d}-{'x' * 20}"
                                                       for i in range(200)])
            del huge["event_type"]
            c.record(event_type="peer_fetch", **dict(huge, peer_id=huge["candidates"][0]))
    records = read_topic(broker.bootstrap, "pakit.peers", 10)  # 4 events per envelope
    assert len(records) == 10 and all(len(r.value) <= limit for r in records)
    assert sum(len(json.loads(r.value)["events"]) for r in records) == 40


def test_broker_outage_loses_nothing(tmp_path):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    c = TelemetryCollector(tmp_path / "t.db", broker=bootstrap, batch_size=1000,
                           flush_interval_s=3600,
                           producer_config={"max_block_ms": 1500, "request_timeout_ms": 1500})
    record_accesses(c, 0, 20)
    assert c.flush(timeout=2) == 0 and c.pending() == 20  # no broker yet: all spooled

    with EmbeddedBroker(port=port) as b:
        create_topics(b.bootstrap, 2)
        assert c.flush() == 20 and c.pending() == 0
        record_accesses(c, 20, 15)
    # broker down again (and, being memory-only, it forgets its topics)
    assert c.flush(timeout=2) == 0 and c.pending() == 15

    with EmbeddedBroker(port=port) as b:
        create_topics(b.bootstrap, 2)
        for _ in range(3):
            if c.flush() and not c.pending():
                break
        assert c.pending() == 0
        records = read_topic(b.bootstrap, "pakit.access", 1)
        assert {ev.block_hash(i) for i in range(20, 35)} <= hashes_in(records)
    c.close()



def test_record_only_spools_while_the_broker_hangs_and_a_thread_publishes_later(tmp_path):
    """record() once flushed under a lock through network I/O, blocking the node for seconds
    against a hung broker. It now only spools; a background thread publishes, and record()
    never waits for it, even while it is stuck connecting."""
    hung = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    port = hung.getsockname()[1]
    with TelemetryCollector(tmp_path / "t.db", broker=f"127.0.0.1:{port}", batch_size=10,
                            flush_interval_s=0.2, retry_max_s=1,
                            producer_config={"max_block_ms": 1500,
                                             "request_timeout_ms": 1500}) as c:
        try:
            slowest = 0.0
            for i in range(100):  # about 3 s, the publishing thread stuck all along
                started = time.perf_counter()
                record_accesses(c, i, 1)
                slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.02)
            assert slowest < 0.05, f"record() took {slowest * 1000:.0f} ms"
            assert c.pending() == 100
        finally:
            hung.close()
        with EmbeddedBroker(port=port) as b:
            create_topics(b.bootstrap, 2)
            wait_for(lambda: c.pending() == 0)  # no flush(): the thread sends them
            c.close()
            records = read_topic(b.bootstrap, "pakit.access", 10**9, timeout=3)
    assert hashes_in(records) == {ev.block_hash(i) for i in range(100)}


def test_reads_carry_their_position_and_a_file_name_is_refused(tmp_path):
    with TelemetryCollector(tmp_path / "t.db", node_id="node-z") as c:
        c.record(event_type="block_accessed", block_hash=ev.block_hash(1), cache_hit=False,
                 latency_ms=2.0, object_id=ev.block_hash(900), chunk_index=17, chunk_count=2)
        [read] = c.get_events("block_accessed")
        assert (read["object_id"], read["chunk_index"], read["chunk_count"]) == (
            ev.block_hash(900), 17, 2)
        with pytest.raises(PrivacyViolation):  # a path names content; a digest does not
            c.record(event_type="block_accessed", block_hash=ev.block_hash(1), cache_hit=False,
                     latency_ms=2.0, object_id="/home/me/thesis.pdf", chunk_index=0)
