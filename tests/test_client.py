"""The node-side HintClient against a real daemon, a stopped one and a slow one."""

import asyncio
import http.server
import threading
import time

import pytest

from pakit_stream.broker import free_port
from pakit_stream.client import AsyncHintClient, HintClient, HintRequestError
from pakit_stream.learners.codec import CodecPolicy

from . import events as ev

PEERS = ["peer-a", "peer-b", "peer-c"]


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers every hint correctly, but only after ``delay`` seconds."""

    delay = 0.5

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        body = b'{"peer_id": "peer-a", "score": 1.0, "source": "learned"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_daemon():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_client_asks_a_real_daemon_for_every_hint(daemon_factory, producer):
    daemon = daemon_factory()
    sent = {"pakit.peers": 300, "pakit.access": 100, "pakit.fingerprints": 20,
            "pakit.blocks": 64}
    for topic, events in (("pakit.peers", [ev.peer_fetch(i) for i in range(300)]),
                          ("pakit.blocks", [ev.stored(i) for i in range(64)]),
                          ("pakit.access", [ev.accessed(i, "node-0", True) for i in range(100)]),
                          ("pakit.fingerprints", [ev.fingerprint(i) for i in range(20)])):
        producer.send(topic, key=b"node-a", value=ev.pack(events)).get(timeout=10)
    daemon.wait_applied(sent)
    with HintClient(daemon.url, timeout=2.0) as hints:
        peer = hints.peer("node-a", ["peer-slow", "peer-fast"])
        assert peer["source"] == "learned" and peer["peer_id"] == "peer-fast"
        assert hints.network(network_size=200, avg_latency_ms=30)["fanout"] > 0
        assert hints.compression(262144)["algorithm"]
        assert "proposals" in hints.prefetch("node-0", k=3, cache_blocks=100)
        similar = hints.similar(ev.block_hash(100_000))
        assert similar["source"] == "learned"
        # the compiled codec decisions, applied locally, choose what the per-block hint does
        answer = hints.codec_policy()
        assert answer["source"] == "learned" and answer["rules"]
        policy = CodecPolicy.from_dict(answer)
        for size in sorted({ev.stored(i)["block_size"] for i in range(64)}):
            assert policy.choose(size) == (hints.compression(size)["algorithm"], False)
        assert hints.stats["answered"] == 70 and hints.stats["fallback"] == 0
        # a second identical peer question within the cache's life is answered locally
        assert hints.peer("node-a", ["peer-slow", "peer-fast"]) == peer
        assert hints.stats["cached"] == 1
        with pytest.raises(HintRequestError) as refused:  # the caller's bug is not hidden
            hints.prefetch(node_id="node-0", k=1000)
        assert refused.value.status == 400 and not hints.breaker.open

    async def ask_async():
        async with AsyncHintClient(daemon.url, timeout=2.0) as hints:
            return await hints.peer("node-a", ["peer-slow", "peer-fast"])

    assert asyncio.run(ask_async())["peer_id"] == "peer-fast"


def test_a_stopped_daemon_gets_the_fallback_and_opens_the_breaker():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with HintClient(url, timeout=0.5, failures=3, cooldown=60, seed=1) as hints:
        answers = [hints.peer("node-1", PEERS) for _ in range(3)]
        assert all(a["source"] == "fallback" and a["peer_id"] in PEERS for a in answers)
        assert "ConnectError" in answers[0]["error"]
        assert hints.breaker.open
        started = time.perf_counter()
        answer = hints.compression(262144)
        assert answer == {**answer, "algorithm": "zstd-3", "source": "fallback",
                          "error": "circuit open"}
        assert time.perf_counter() - started < 0.01  # the daemon is not asked at all
        assert hints.prefetch("node-1")["blocks"] == []
        policy = CodecPolicy.from_dict(hints.codec_policy())  # no rules: the fixed rule
        assert policy.choose(262144) == ("zstd-3", False) and policy.choose(4096)[0] == "lz4"
        assert hints.stats == {"calls": 6, "answered": 0, "cached": 0, "fallback": 6}


def test_a_slow_daemon_is_cut_off_at_the_deadline_and_retried_after_the_cooldown(slow_daemon):
    with HintClient(slow_daemon, timeout=0.1, failures=2, cooldown=0.3, cache_ttl=0) as hints:
        started = time.perf_counter()
        answer = hints.peer("node-1", PEERS)
        assert time.perf_counter() - started < 0.4
        assert answer["source"] == "fallback" and answer["error"] == "timeout"
        hints.peer("node-1", PEERS)
        assert hints.breaker.open
        _Slow.delay = 0.0  # the daemon recovers
        assert hints.peer("node-1", PEERS)["error"] == "circuit open"
        time.sleep(0.35)
        assert hints.peer("node-1", PEERS) == {"peer_id": "peer-a", "score": 1.0,
                                                "source": "learned"}
        assert not hints.breaker.open
    _Slow.delay = 0.5

    async def ask_async():
        async with AsyncHintClient(slow_daemon, timeout=0.1) as hints:
            started = time.perf_counter()
            answer = await hints.peer("node-1", PEERS)
            return answer, time.perf_counter() - started

    answer, took = asyncio.run(ask_async())
    assert answer["error"] == "timeout" and took < 0.3
