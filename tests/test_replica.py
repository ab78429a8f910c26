"""Hint replicas (``PAKIT_STREAM_HINT_PORT``): forked images of the learners that serve the hint
routes away from ingestion, refreshed and handed over without a request lost."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import msgspec

from pakit_stream.broker import free_port
from pakit_stream.daemon.replica import HintReplicas, PipeMeter

from . import events as ev
from .test_daemon import metric, send

NETWORK = json.dumps({"network_size": 100, "avg_latency_ms": 40, "message_loss_rate": 0.01})


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def ask(port: int, method: str, path: str, body: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.1)
    return value


class Hammer(threading.Thread):
    """Asks the network hint over one kept-alive connection, every 5 ms, until stopped;
    reconnects only when an answer said ``Connection: close``."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.statuses, self.errors = port, [], []
        self.closes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.halt.is_set():
            try:
                conn.request("POST", "/v1/hints/network", NETWORK,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.statuses.append(response.status)
                self.closes += response.getheader("Connection") == "close"
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))
                conn.close()
            time.sleep(0.005)
        conn.close()


def test_replicas_answer_what_the_worker_learned_and_hand_over_without_losing_a_request(
        producer, daemon_factory):
    port = free_port()
    daemon = daemon_factory(PAKIT_STREAM_HINT_PORT=port, PAKIT_STREAM_HINT_REFRESH_S=0.3,
                            PAKIT_STREAM_GOSSIP_EPSILON=0.3)
    similar_path = f"/v1/hints/similar/{ev.block_hash(100_000)}?top_k=3"
    wait_for(lambda: metric(daemon, "pakit_stream_hint_replica_refreshes_total", outcome="ok"),
             what="a replica serving")
    assert ask(port, "GET", similar_path) == (200, {"block_hash": ev.block_hash(100_000),
                                                    "similar": [], "source": "fallback"})
    hammer = Hammer(port)
    hammer.start()
    send(producer, "pakit.fingerprints", ev.pack(
        [ev.fingerprint(0)] + [ev.fingerprint(i, base=0, edits=3 * i) for i in range(1, 8)]))
    send(producer, "pakit.peers", ev.pack([ev.peer_fetch(i) for i in range(90)]))
    send(producer, "pakit.gossip", ev.pack([ev.gossip(i) for i in range(90)]))
    daemon.wait_applied({"pakit.fingerprints": 8, "pakit.peers": 90, "pakit.gossip": 90})
    refreshed = metric(daemon, "pakit_stream_hint_replica_refreshes_total", outcome="ok")

    def refreshes() -> float:
        return metric(daemon, "pakit_stream_hint_replica_refreshes_total", outcome="ok")

    # a replica forked after all of it answers what the worker answers
    wait_for(lambda: refreshes() >= refreshed + 2, what="a replica of the learned state")
    status, learned = ask(port, "GET", similar_path)
    assert status == 200 and learned == daemon.get(similar_path)
    assert [s["block_hash"] for s in learned["similar"]] == [ev.block_hash(100_000 + i)
                                                             for i in (1, 2, 3)]
    peer = json.dumps({"node_id": "node-a", "context": {"network_load": 0.2},
                       "available_peers": ["peer-slow", "peer-fast", "peer-mid"]})
    status, answer = ask(port, "POST", "/v1/hints/peer", peer)
    assert status == 200 and (answer["peer_id"], answer["source"]) == ("peer-fast", "learned")
    assert ask(port, "POST", "/v1/hints/peer", "{}")[0] == 400  # the same validation

    refreshed = refreshes()
    wait_for(lambda: refreshes() >= refreshed + 5, what="five more handovers")
    hammer.halt.set()
    hammer.join()
    # every request answered, across every handover; each handover told the client to move
    assert hammer.errors == [] and set(hammer.statuses) == {200}
    assert len(hammer.statuses) > 100 and hammer.closes >= 5
    # what the replicas answered is counted in the worker's metrics, request for request
    assert wait_for(lambda: sum(metric(daemon, "pakit_stream_hint_requests_total",
                                       hint="network", source=s) or 0
                                for s in ("learned", "explore", "fallback"))
                    == len(hammer.statuses), what="every network hint counted")
    assert metric(daemon, "pakit_stream_hint_replica_age_seconds") < 5

    # each replica draws its own exploration, not the worker's draws replayed from the fork
    ask(port, "POST", "/v1/hints/network", NETWORK)  # a replica of the 90 rounds serves

    def sources() -> list[str]:
        return [ask(port, "POST", "/v1/hints/network", NETWORK)[1]["source"] for _ in range(25)]

    first = sources()
    refreshed = refreshes()
    wait_for(lambda: refreshes() >= refreshed + 2, what="another replica")
    second = sources()
    assert {"learned", "explore"} <= set(first + second) and first != second

    replicas = children(daemon.process.pid)
    assert replicas
    daemon.stop()
    wait_for(lambda: not any(alive(p) for p in replicas), timeout=10, what="replicas stopped")


def test_replicas_of_a_killed_worker_exit(daemon_factory):
    port = free_port()
    daemon = daemon_factory(PAKIT_STREAM_HINT_PORT=port, PAKIT_STREAM_HINT_REFRESH_S=0.3)
    wait_for(lambda: metric(daemon, "pakit_stream_hint_replica_refreshes_total", outcome="ok"),
             what="a replica serving")
    assert ask(port, "POST", "/v1/hints/network", NETWORK)[0] == 200
    replicas = children(daemon.process.pid)
    assert replicas
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait(10)
    # orphaned, each notices within half a second and exits: nothing answers stale hints
    wait_for(lambda: not any(alive(p) for p in replicas), timeout=10, what="orphans exited")


def test_a_replica_holds_none_of_the_workers_connections(daemon_factory):
    """A connection the worker closes is closed for its client at once, though a replica
    forked while it was open still lives (draining an idle kept-alive connection)."""
    port = free_port()
    daemon = daemon_factory(PAKIT_STREAM_HINT_PORT=port, PAKIT_STREAM_HINT_REFRESH_S=0.3)
    wait_for(lambda: metric(daemon, "pakit_stream_hint_replica_refreshes_total", outcome="ok"),
             what="a replica serving")
    with socket.create_connection(("127.0.0.1", port)) as idle, \
            socket.create_connection(("127.0.0.1", daemon.web_port)) as api:
        idle.sendall(b"GET /v1/policies/codec HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive, then idle
        api.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        api.settimeout(3.0)  # a replica that held the connection would delay its end by 5 s
        received = b""
        while chunk := api.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")


def test_pipe_meter_writes_whole_lines_and_keeps_what_a_full_pipe_refuses():
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        meter = PipeMeter(write)
        seconds = [0.00003642178945173131 * (i + 1) for i in range(20000)]  # long reprs
        for value in seconds:
            meter.hint("peer", "learned", value)
        meter.canary("prefetch_engine", "canary")
        meter.flush()  # 200 lines of about 900 bytes: more than a 64 KiB pipe holds
        assert meter._lines  # kept for the next flush
        received = b""
        while True:
            meter.flush()
            if not meter._lines:
                break
            received += os.read(read, 1 << 16)  # room again: the rest follows
        os.set_blocking(read, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(read, 1 << 16):
                received += chunk
    finally:
        os.close(read)
        os.close(write)
    lines = [msgspec.json.decode(line) for line in received.split(b"\n") if line]
    assert all(len(line) < select.PIPE_BUF for line in received.split(b"\n"))  # atomic
    micros = [v for kind, *rest in lines if kind == "hint" for v in rest[2]]
    assert micros == [round(v * 1e6) for v in seconds]  # none lost, none twice, in order
    assert ["count", "canary", "prefetch_engine", "canary", 1] in lines


def test_a_replica_ready_stops_only_older_ones():
    """Replicas A, B forked in that order: A's late "ready" stops nothing newer, B's stops A,
    and a ready from A after B serves stops A only."""
    stopped = []
    replicas = HintReplicas.__new__(HintReplicas)  # the bookkeeping alone, no daemon
    replicas.forked_at = {100: (1, 0.0), 200: (2, 0.0)}  # pid -> (serial, fork time)
    replicas.stopping, replicas.serving = {}, None
    replicas._refreshes = type("Counter", (), {"labels": lambda self, **_: self,
                                               "inc": lambda self, n=1: None})()
    replicas._stop = lambda pid: (stopped.append(pid), replicas.stopping.update({pid: 0.0}))
    replicas._ready(100)
    assert (stopped, replicas.serving) == ([], 100)
    replicas._ready(200)
    assert (stopped, replicas.serving) == ([100], 200)
    replicas.forked_at[300] = (3, 0.0)
    replicas.stopping.clear()
    stopped.clear()
    replicas.serving = 300
    replicas._ready(200)  # forked before the one serving: told to stop, serving unchanged
    assert (stopped, replicas.serving) == ([200], 300)
