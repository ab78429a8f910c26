"""``pakit-stream demo``: the whole loop on one machine, with nothing but this package.

An embedded broker starts, the daemon starts against it (a real ``pakit-stream run``
subprocess), and simulated nodes publish telemetry made from real local files through
:class:`~pakit_stream.telemetry.TelemetryCollector`. Progress is printed live; at the end each
learner's hints are scored against its fallback on situations the simulator can judge.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from pakit_stream.broker import EmbeddedBroker, create_topics, free_port
from pakit_stream.events import block_minhash
from pakit_stream.events.schema import TOPICS
from pakit_stream.exceptions import DaemonError
from pakit_stream.simulate import NodeSimulator, default_source, gossip_round, read_blocks
from pakit_stream.telemetry import TelemetryCollector
from pakit_stream.telemetry.publish import make_producer

__all__ = ["run_demo", "DaemonProcess"]


class DaemonProcess:
    """``pakit-stream run`` in a subprocess, with HTTP helpers (also used by the tests)."""

    def __init__(self, bootstrap: str, data_dir: Path, web_port: int | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 loglevel: str = "warn") -> None:
        self.bootstrap, self.data_dir = bootstrap, Path(data_dir)
        self.web_port = web_port or free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or self.data_dir / "daemon.log"
        self.loglevel = loglevel
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> DaemonProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pakit_stream", "run", "--broker", self.bootstrap,
             "--web-port", str(self.web_port), "--data-dir", str(self.data_dir),
             "--loglevel", self.loglevel],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DaemonError(f"daemon exited ({self.process.returncode}); see {self.log_path}")
            try:
                self.get("/health")
                return self
            except OSError:
                time.sleep(0.25)
        raise DaemonError(f"daemon did not answer within {timeout}s; see {self.log_path}")

    def get(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    def post(self, path: str, body: dict, timeout: float = 5.0) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def wait_applied(self, expected: dict[str, int], timeout: float = 60.0) -> dict:
        """Poll /health until every topic's applied count reaches ``expected``."""
        deadline = time.monotonic() + timeout
        health = self.get("/health")
        while time.monotonic() < deadline:
            health = self.get("/health")
            if all(health["applied"][t] >= n for t, n in expected.items()):
                return health
            time.sleep(0.2)
        raise TimeoutError(f"applied {health['applied']} never reached {expected}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def kill(self) -> None:
        """kill -9: no final checkpoint, no goodbye."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _line(label: str, learned: str, fallback: str) -> str:
    return f"  {label:<34} {learned:>22}   vs fallback {fallback}"


def run_demo(seconds: float = 60.0, source: Path | None = None, data_dir: Path | None = None,
             web_port: int = 0, max_blocks: int = 1500) -> int:
    source = Path(source) if source else default_source()
    data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="pakit-stream-demo-"))
    print(f"pakit-stream demo: blocks from {source}, model store {data_dir}", flush=True)
    blocks = read_blocks(source, max_blocks=max_blocks)
    sim = NodeSimulator(blocks)
    print(f"  {len(blocks)} real blocks from {len({b.file_index for b in blocks})} files", flush=True)
    with EmbeddedBroker(log_path=data_dir / "broker.log") as broker:
        create_topics(broker.bootstrap, 4)
        daemon = DaemonProcess(broker.bootstrap, data_dir, web_port or None).start()
        print(f"  broker {broker.bootstrap}, daemon {daemon.url}", flush=True)
        try:
            sent = _stream(sim, broker.bootstrap, daemon, data_dir, seconds)
            health = daemon.wait_applied(sent, timeout=120)
            _report(sim, daemon, health)
        finally:
            daemon.stop()
    return 0


def _stream(sim: NodeSimulator, bootstrap: str, daemon: DaemonProcess, data_dir: Path,
            seconds: float) -> dict[str, int]:
    collector = TelemetryCollector(data_dir / "node-telemetry.db", broker=bootstrap,
                                   batch_size=500, flush_interval_s=0.5)
    sent = dict.fromkeys(TOPICS, 0)
    topic_of = {"block_stored": "pakit.blocks", "block_fingerprint": "pakit.fingerprints",
                "block_accessed": "pakit.access", "peer_fetch": "pakit.peers",
                "gossip_round": "pakit.gossip"}

    def emit(events) -> None:
        for e in events:
            collector.record(**e)
            sent[topic_of[e["event_type"]]] += 1

    # a few refused messages, to show the dead-letter path
    raw = make_producer(bootstrap)
    for bad in (b"\x00 not json", b'{"event_type": "block_accessed", "node_id": "n", "ts": 1, '
                b'"content": "the block itself"}'):
        raw.send("pakit.access", bad)
    raw.flush()
    raw.close()

    started = time.monotonic()
    stored = sim.stored_events()
    degraded = None
    last_print = 0.0
    while (elapsed := time.monotonic() - started) < seconds:
        emit(itertools.islice(stored, 20))
        emit(sim.access_events(3))
        emit(sim.peer_events(60))
        emit(sim.gossip_events(30))
        if degraded is None and elapsed > seconds / 2:
            degraded = sim.world.degrade_best()
            print(f"  [{elapsed:5.1f}s] peer {degraded} just became 6x slower", flush=True)
        if elapsed - last_print >= 3:
            last_print = elapsed
            h = daemon.get("/health")
            m = daemon.get("/metrics")
            dlq = sum(float(line.split()[-1]) for line in m.splitlines()
                      if line.startswith("pakit_stream_dlq_messages_total"))
            print(f"  [{elapsed:5.1f}s] sent {sum(sent.values()):>7}  learned from "
                  f"{sum(h['applied'].values()):>7}  LSH {h['learners']['dedup']['entries']:>5}  "
                  f"peers {h['learners']['peers']['peers']:>3}  DLQ {dlq:.0f}", flush=True)
    while collector.flush() or collector.pending():
        time.sleep(0.1)
    collector.close()
    return sent


def _report(sim: NodeSimulator, daemon: DaemonProcess, health: dict) -> None:
    rng = np.random.default_rng(99)
    world = sim.world
    print("\nWhat each learner learned, against its fallback:")
    # peers: expected latency of the hinted peer vs a random candidate
    chosen, random_pick, best = [], [], []
    for _ in range(200):
        cands = world.candidates()
        ctx = world.context(time.time())
        hint = daemon.post("/v1/hints/peer", {"node_id": sim.nodes[0], "available_peers": cands,
                                              "context": ctx})
        load = ctx["network_load"]
        chosen.append(world.expected_ms(hint["peer_id"], load))
        random_pick.append(np.mean([world.expected_ms(p, load) for p in cands]))
        best.append(min(world.expected_ms(p, load) for p in cands))
    print(_line("peer bandit: mean fetch latency", f"{np.mean(chosen):.1f} ms",
                f"random peer {np.mean(random_pick):.1f} ms (oracle {np.mean(best):.1f} ms)"))
    # gossip: what the hinted setting reaches and costs vs fanout 6 / TTL 10
    learned_r, fallback_r = [], []
    for size in (50, 200, 500):
        for loss in (0.0, 0.1):
            hint = daemon.post("/v1/hints/network", {"network_size": size, "avg_latency_ms": 50,
                                                     "message_loss_rate": loss})
            hinted = (hint["fanout"], hint["ttl"], hint["mode"], hint["pull_rounds"])
            for (f, t, mode, pull), acc in ((hinted, learned_r), ((6, 10, "push", 0), fallback_r)):
                for _ in range(10):
                    cov, payload, control = gossip_round(size, f, t, loss, rng, mode, pull)
                    acc.append((cov, payload / size, control / size))
    lc, lm, lctl = np.mean(learned_r, axis=0)
    fc, fm, _ = np.mean(fallback_r, axis=0)
    print(_line("gossip: coverage, payload msgs/node", f"{lc:.3f}, {lm:.1f}",
                f"fanout 6/TTL 10 {fc:.3f}, {fm:.1f} (ours adds {lctl:.1f} digests/node)"))
    # dedup: near-duplicate pairs (brute-force Jaccard on signatures) found by the LSH
    unique = {b.block_hash: b for b in sim.blocks}  # identical blocks share a hash: not "similar"
    sample = list(unique.values())[:600]
    mat = np.array([block_minhash(b.data) for b in sample], dtype=np.uint32)
    truth = found = 0
    for i in range(len(sample)):
        j = (mat[i] == mat).mean(axis=1)
        j[i] = 0
        near = {sample[k].block_hash for k in np.nonzero(j >= 0.8)[0]}
        if near:
            truth += len(near)
            res = daemon.get(f"/v1/hints/similar/{sample[i].block_hash}?top_k=20")
            found += len(near & {s["block_hash"] for s in res["similar"]})
    recall = found / truth if truth else float("nan")
    print(_line("dedup LSH: recall of J>=0.8 pairs", f"{recall:.1%} of {truth}",
                "exact hash match 0% (near-duplicates differ)"))
    q = health["quality"]
    print(_line("prefetch: next block in top 5", f"{q['prefetch_hit5']:.1%}",
                "no prefetch 0%"))
    print(f"\n  events learned from: {health['applied']}")
    print(f"  model store: {daemon.data_dir}  (checkpoint: checkpoints/daemon.ckpt)")
