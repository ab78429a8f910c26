"""Scale-out: several workers of one app in one consumer group, against the embedded broker.

Events are keyed by node, so each partition, and the per-node learner state built from it,
belongs to one worker at a time. When a worker dies, its partitions move to the survivors,
which replay them from the last offset they know (the start, for partitions they never held):
every event the broker acknowledged is applied, and hints keep being answered throughout.
"""

from __future__ import annotations

import threading
import time
import urllib.error

from pakit_stream.telemetry.publish import envelope

from . import events as ev

NODES = [f"node-{i}" for i in range(8)]


def produce(producer, start: int, n: int) -> int:
    """``n`` single-event messages of reads, keyed by node; returns the events sent."""
    for i in range(start, start + n):
        node = NODES[i % len(NODES)]
        producer.send("pakit.access", key=node.encode(),
                      value=envelope([ev.raw(ev.accessed(i, node=node))]))
    producer.flush()
    return n


def applied(daemon) -> int:
    return daemon.get("/health")["applied"]["pakit.access"]


def wait_until(predicate, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_a_dead_workers_partitions_move_and_nothing_acknowledged_is_lost(
        broker, producer, daemon_factory, tmp_path):
    a = daemon_factory(tmp_path / "a", PAKIT_STREAM_CHECKPOINT_INTERVAL_S=1)
    b = daemon_factory(tmp_path / "b", PAKIT_STREAM_CHECKPOINT_INTERVAL_S=1)
    sent, deadline = 0, time.monotonic() + 90
    while not (applied(a) > 0 and applied(b) > 0):  # until the group spread the partitions
        assert time.monotonic() < deadline, "the partitions never spread over both workers"
        sent += produce(producer, sent, 40)
        time.sleep(1.0)
    # a partition that moved while the group spread was replayed from its start by its new
    # owner: every event is applied, some of them by both
    wait_until(lambda: applied(a) + applied(b) >= sent)
    time.sleep(1)
    a0, b0 = applied(a), applied(b)
    sent += produce(producer, sent, 200)
    # in the settled group each event is applied exactly once
    wait_until(lambda: applied(a) - a0 + applied(b) - b0 == 200)
    time.sleep(2.5)  # a checkpoint of each covers what it applied

    failures, answered, stop = [], [0], threading.Event()

    def ask_b():  # hints from the survivor, all through the rebalance
        while not stop.is_set():
            try:
                b.post("/v1/hints/network", {"network_size": 100, "avg_latency_ms": 40.0,
                                             "message_loss_rate": 0.0})
                answered[0] += 1
            except (OSError, urllib.error.URLError) as exc:
                failures.append(exc)
            time.sleep(0.1)

    asker = threading.Thread(target=ask_b)
    asker.start()
    try:
        a.kill()  # kill -9: no final checkpoint
        sent += produce(producer, sent, 200)
        # b takes a's partitions over and replays them: every event is applied by b now
        wait_until(lambda: applied(b) == sent, timeout=120)
    finally:
        stop.set()
        asker.join()
    assert not failures and answered[0] > 10

    # a comes back from its checkpoint; the group rebalances again; new events still all land
    restarted = daemon_factory(tmp_path / "a", PAKIT_STREAM_CHECKPOINT_INTERVAL_S=1)
    assert applied(restarted) > 0  # restored from its checkpoint, not from empty
    more = produce(producer, sent, 200)
    before_b = applied(b)
    wait_until(lambda: (applied(restarted) + applied(b) - before_b) >= more
               and applied(b) >= before_b, timeout=120)
    assert b.get("/health")["status"] == "ok" and restarted.get("/health")["status"] == "ok"


def test_the_leaders_new_model_reaches_every_worker(producer, daemon_factory, tmp_path):
    """Only the leader retrains; the version it promotes is published on the models topic,
    and every worker, each with its own model store, verifies it and serves it."""
    from .test_retrain import stored_blocks

    env = dict(PAKIT_STREAM_RETRAIN_CHECK_S=1, PAKIT_STREAM_RETRAIN_MIN_NEW=150,
               PAKIT_STREAM_RETRAIN_MIN_SAMPLES=150, PAKIT_STREAM_RETRAIN_MIN_GAIN=-1,
               PAKIT_STREAM_RETRAIN_TIMEOUT_S=240)
    workers = [daemon_factory(tmp_path / "a", **env), daemon_factory(tmp_path / "b", **env)]
    blocks = stored_blocks(0, 1200, seed=3)
    deadline = time.monotonic() + 240
    served = set()
    sent = 0
    while time.monotonic() < deadline:
        for e in blocks[sent:sent + 200]:  # keep the stream going until a model is out
            node = NODES[int(e["block_hash"][:8], 16) % len(NODES)]
            producer.send("pakit.blocks", key=node.encode(),
                          value=envelope([ev.raw(dict(e, node_id=node))]))
        producer.flush()
        sent = min(sent + 200, len(blocks))
        served = {w.get("/health")["learners"]["codec_model"] for w in workers}
        if len(served) == 1 and None not in served:
            break
        time.sleep(2)
    assert len(served) == 1 and None not in served, f"workers serve {served}"
    (version,) = served
    for w, store in zip(workers, ("a", "b")):
        assert (tmp_path / store / "compression_predictor" / version / "model.safetensors").exists()
        answer = w.post("/v1/hints/compression", {"block_size": 65536, "probe_ratio": 0.5,
                                                  "entropy": 7.5})
        assert (answer["expert"], answer["model_version"]) == ("net", version)


def test_every_worker_answers_for_every_node_and_finds_every_near_duplicate(
        producer, daemon_factory, tmp_path):
    """Three workers of one group; 24 nodes, each with its own fastest peer, each indexing a
    near-duplicate of another node's block. A node's peer hint is answered by the worker that
    owns the node (forwarded there); the dedup index is learned in full by every worker."""
    workers = [daemon_factory(tmp_path / w) for w in "abc"]
    nodes = [f"node-{i}" for i in range(24)]
    peers = ["peer-0", "peer-1", "peer-2"]
    fastest = {}
    for i, node in enumerate(nodes):
        fastest[node] = peers[i % 3]
        latency = {p: 15.0 if p == fastest[node] else 300.0 for p in peers}
        producer.send("pakit.peers", key=node.encode(), value=ev.pack(
            [ev.peer_fetch(k, node=node, latency=latency) for k in range(30)]))
        near = ev.fingerprint(1000 + i, node=node, base=(i + 1) % 24, edits=4)
        producer.send("pakit.fingerprints", key=node.encode(),
                      value=ev.pack([ev.fingerprint(i, node=node), near]))
    producer.flush()

    def settled() -> bool:  # every worker learned the whole index; the owners, every fetch
        health = [w.get("/health") for w in workers]
        return (all(h["learners"]["dedup"]["entries"] == 48 for h in health)
                and sum(h["applied"]["pakit.peers"] for h in health) >= 24 * 30)

    def wrong() -> list:
        out = []
        for w in workers:
            for i, node in enumerate(nodes):
                answer = w.post("/v1/hints/peer",
                                {"node_id": node, "available_peers": peers[::-1]})
                if (answer["peer_id"], answer["source"]) != (fastest[node], "learned"):
                    out.append((w.url, node, answer))
                found = w.get(f"/v1/hints/similar/{ev.block_hash(100_000 + i)}")["similar"]
                if ev.block_hash(100_000 + 1000 + (i - 1) % 24) not in [
                        s["block_hash"] for s in found]:
                    out.append((w.url, node, found))
        return out

    wait_until(settled, timeout=150)
    wait_until(lambda: not wrong(), timeout=60)  # the last rebalance may still be settling
    assert wrong() == []
    # with 2 partitions and 3 workers, at least one worker owns no node and forwards them all
    forwarded = [metric_value(w, "pakit_stream_hints_routed_total", outcome="forwarded")
                 for w in workers]
    assert sum(forwarded) >= 24 and max(forwarded) >= 24


def metric_value(daemon, name: str, **labels) -> float:
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in daemon.get("/metrics").splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
