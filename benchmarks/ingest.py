"""Ingest throughput: the full pipeline vs the learners alone vs a Faust no-op agent.

One run, one embedded broker. A realistic mix of events (reads dominate; each stored block
brings a fingerprint; fetches follow cache misses; gossip rounds are rarer) is built once and
measured three ways:

* **pipeline** — envelopes of ``--envelope`` events pre-produced to the broker; a fresh
  ``pakit-stream run`` drains them; events/s from its first to its last applied event.
* **learners only** — the same events, already decoded, through ``Pipeline.apply`` in memory;
  also **decode + learners** (``Pipeline.handle`` on the envelope bytes, no Kafka). The
  learners alone run again just before each pipeline run, and the pipeline's ratio to them is
  taken against that run: this machine's speed drifts too much between minutes for a ratio of
  two runs far apart. **Decoding** alone is timed per topic too: the daemon's decoder against
  the contract's strict types by themselves.
* **faust no-op** — single-event messages through a Faust agent that does nothing.

Prints the figures and their ratios and writes them to ``--out`` as JSON.

    python benchmarks/ingest.py --events 300000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import msgspec
import numpy as np

from pakit_stream.broker import EmbeddedBroker, create_topics, ensure_topics
from pakit_stream.demo import DaemonProcess
from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings
from pakit_stream.simulate import PeerWorld, gossip_round
from pakit_stream.telemetry.publish import envelope, make_producer

MIX = {"pakit.access": 0.50, "pakit.peers": 0.20, "pakit.blocks": 0.12,
       "pakit.fingerprints": 0.12, "pakit.gossip": 0.06}
HERE = Path(__file__).resolve().parent


def make_events(n: int, seed: int = 1) -> dict[str, list[bytes]]:
    """JSON-encoded events per topic, in the proportions of MIX."""
    rng = np.random.default_rng(seed)
    enc = msgspec.json.encode
    counts = {t: int(n * share) for t, share in MIX.items()}
    hashes = [f"{int(x):064x}" for x in rng.integers(0, 2**62, 50_000)]
    nodes = [f"node-{i}" for i in range(32)]
    world = PeerWorld(n_peers=40, seed=seed)
    out: dict[str, list[bytes]] = {t: [] for t in MIX}
    zipf = np.minimum(rng.zipf(1.2, counts["pakit.access"]), len(hashes)) - 1
    for i in range(counts["pakit.access"]):
        out["pakit.access"].append(enc({
            "event_type": "block_accessed", "node_id": nodes[i % 32], "ts": 1.7e9 + i,
            "block_hash": hashes[zipf[i]], "cache_hit": bool(rng.random() < 0.6),
            "latency_ms": round(float(rng.gamma(2, 2)), 3)}))
    for i in range(counts["pakit.peers"]):
        cands = world.candidates()
        peer = cands[i % len(cands)]
        ctx = world.context(1.7e9 + i)
        ok, ms = world.fetch(peer, ctx["network_load"])
        out["pakit.peers"].append(enc({
            "event_type": "peer_fetch", "node_id": nodes[i % 32], "ts": 1.7e9 + i,
            "block_hash": hashes[i % len(hashes)], "peer_id": peer, "candidates": cands,
            "success": ok, "latency_ms": ms, "block_size": 262144, "context": ctx}))
    codecs = ["zstd", "lz4", "snappy", "brotli", "none"]
    for i in range(counts["pakit.blocks"]):
        size = int(rng.integers(4096, 1 << 20))
        out["pakit.blocks"].append(enc({
            "event_type": "block_stored", "node_id": nodes[i % 32], "ts": 1.7e9 + i,
            "block_hash": hashes[i % len(hashes)], "block_size": size, "block_depth": i % 8,
            "compression_algorithm": "zstd", "compression_ratio": 0.45, "parent_count": 1,
            "entropy": round(float(rng.uniform(2, 8)), 3),
            "codec_results": [{"algorithm": c, "compressed_size": int(size * rng.uniform(0.2, 1)),
                               "compress_us": float(rng.uniform(10, 900)),
                               "decompress_us": float(rng.uniform(5, 200))} for c in codecs]}))
    base = rng.integers(0, 2**32, size=(2000, 128), dtype=np.uint64)
    for i in range(counts["pakit.fingerprints"]):
        sig = base[i % 2000].copy() if rng.random() < 0.2 else rng.integers(0, 2**32, 128)
        sig[: int(rng.integers(0, 30))] = rng.integers(0, 2**32)
        out["pakit.fingerprints"].append(enc({
            "event_type": "block_fingerprint", "node_id": nodes[i % 32], "ts": 1.7e9 + i,
            "block_hash": f"{i:064x}", "minhash": [int(v) for v in sig]}))
    for i in range(counts["pakit.gossip"]):
        size, loss = int(rng.choice([50, 200, 1000])), float(rng.choice([0.0, 0.05]))
        fanout, ttl = int(rng.integers(2, 9)), int(rng.integers(3, 12))
        cov, msgs, _ = gossip_round(size, fanout, ttl, loss, rng)
        out["pakit.gossip"].append(enc({
            "event_type": "gossip_round", "node_id": nodes[i % 32], "ts": 1.7e9 + i,
            "network_size": size, "avg_latency_ms": 40.0, "message_loss_rate": loss,
            "fanout": fanout, "ttl": ttl, "coverage": cov, "messages_sent": msgs}))
    return out


def envelopes(events: dict[str, list[bytes]], size: int) -> list[tuple[str, bytes, int]]:
    """(topic, value, events) in an interleaved order, as many nodes would produce them."""
    per_topic = {t: [(t, envelope(v[i:i + size]), len(v[i:i + size]))
                     for i in range(0, len(v), size)] for t, v in events.items()}
    out = []
    while any(per_topic.values()):
        for t in MIX:
            if per_topic[t]:
                out.append(per_topic[t].pop(0))
    return out


def decode_all(msgs: list[tuple[str, bytes, int]]) -> list[tuple[str, list]]:
    p = Pipeline(Settings(), Metrics())
    return [(topic, p.decoders[topic].decode(value).events) for topic, value, _ in msgs]


def learners_alone(decoded: list[tuple[str, list]]) -> tuple[float, Pipeline]:
    """Events/s of a fresh pipeline's learners on decoded events, and the pipeline."""
    learners = Pipeline(Settings(), Metrics())
    t0 = time.perf_counter()
    for topic, events in decoded:
        learners.apply(topic, events)
    return sum(len(e) for _, e in decoded) / (time.perf_counter() - t0), learners


def bench_in_memory(msgs: list[tuple[str, bytes, int]]) -> dict:
    settings = Settings()
    decoded = decode_all(msgs)
    n = sum(len(e) for _, e in decoded)
    learners_rate, learners = learners_alone(decoded)
    full = Pipeline(settings, Metrics())
    t0 = time.perf_counter()
    for offset, (topic, value, _) in enumerate(msgs):
        full.handle(topic, 0, offset, value)
    handle_s = time.perf_counter() - t0
    # once a codec model serves, every labelled stored block is scored online before learning
    scored = Pipeline(settings, Metrics())
    scored.codec_model = _served_codec_model(learners)
    t0 = time.perf_counter()
    for topic, events in decoded:
        scored.apply(topic, events)
    scored_s = time.perf_counter() - t0
    return {"events": n, "learners_only_events_per_s": learners_rate,
            "decode_and_learners_events_per_s": n / handle_s,
            "learners_with_codec_model_serving_events_per_s": n / scored_s}


def bench_decode(msgs: list[tuple[str, bytes, int]], repeats: int = 3) -> dict:
    """µs per event of decoding each topic's envelopes: the decoder the daemon uses (its fast
    path checks each string pattern once per envelope) against the contract's strict types
    alone (msgspec checks each string's pattern by itself), alternating, best of ``repeats``."""
    from pakit_stream.events.schema import TOPICS, Envelope, wire_type

    out = {}
    for topic in TOPICS:
        values = [v for t, v, _ in msgs if t == topic]
        n = sum(n for t, _, n in msgs if t == topic)
        fast = Pipeline(Settings(), Metrics()).decoders[topic].decode
        strict = msgspec.json.Decoder(Envelope[wire_type(TOPICS[topic])]).decode
        best = {"fast": float("inf"), "strict": float("inf")}
        for _ in range(repeats):
            for name, decode in (("fast", fast), ("strict", strict)):
                t0 = time.perf_counter()
                for value in values:
                    decode(value)
                best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
        out[topic] = {"fast_us_per_event": best["fast"], "strict_us_per_event": best["strict"],
                      "strict_over_fast": best["strict"] / best["fast"]}
    return out


def _served_codec_model(trained_on: Pipeline):
    """A codec model trained on the run's own labelled window, as the daemon would serve it."""
    from pakit_stream.batch.compression import CompressionPredictor
    from pakit_stream.serving.codec import ServedCodecModel
    from pakit_stream.training import ModelTrainer, TrainingConfig, TrainingDataset

    lam = trained_on.codec.cpu_bytes_per_us
    data = TrainingDataset([(x["features"], {c: b + lam * us for c, (b, us) in costs.items()})
                            for x, costs in list(trained_on.codec_window)[:5000]])
    model = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=3)).train(model, *data.split(0.8, 0.2, 0.0)[:2])
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "codec.safetensors")
        return ServedCodecModel(Path(tmp) / "codec.safetensors")


def bench_pipeline(bootstrap: str, msgs, data_dir: Path, loop: str) -> dict:
    producer = make_producer(bootstrap, linger_ms=20, batch_size=1 << 20)
    keys = [f"node-{i}".encode() for i in range(32)]
    for i, (topic, value, _) in enumerate(msgs):
        producer.send(topic, key=keys[i % 32], value=value)
    producer.flush()
    producer.close()
    total = sum(n for *_, n in msgs)
    daemon = DaemonProcess(bootstrap, data_dir, env={"PAKIT_STREAM_TOPIC_PARTITIONS": "4",
                                                     "PAKIT_STREAM_CHECKPOINT_INTERVAL_S": "5",
                                                     "PAKIT_STREAM_EVENT_LOOP": loop,
                                                     "PAKIT_STREAM_APP_ID": f"bench-{loop}"})
    daemon.start()
    try:
        first = None
        while True:
            applied = sum(daemon.get("/health")["applied"].values())
            now = time.perf_counter()
            if first is None and applied > 0:
                first = (now, applied)
            if applied >= total:
                break
            time.sleep(0.05)
        rss = _rss_mb(daemon.process.pid)
        seconds = now - first[0]
        return {"events": total, "seconds": seconds,
                "events_per_s": (total - first[1]) / seconds, "daemon_rss_mb": rss}
    finally:
        daemon.stop()


def bench_faust_noop(bootstrap: str, n: int) -> dict:
    ensure_topics(bootstrap, ["bench.noop"], 1)
    producer = make_producer(bootstrap, linger_ms=20)
    for i in range(n):
        producer.send("bench.noop", value=b'{"i": %d}' % i)
    producer.flush()
    producer.close()
    out = subprocess.run([sys.executable, str(HERE / "_faust_noop.py"), bootstrap, "bench.noop",
                          str(n)], capture_output=True, text=True, timeout=600)
    # Faust redirects stdout into its logger, so the JSON line may end up on either stream
    line = [ln[ln.index("{"):] for ln in (out.stdout + out.stderr).splitlines()
            if "\"messages_per_s\"" in ln]
    if not line:
        raise RuntimeError(f"no-op agent failed: {out.stderr[-2000:]}")
    return json.loads(line[-1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--envelope", type=int, default=500, help="events per Kafka message")
    ap.add_argument("--noop-messages", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=3,
                    help="pipeline runs per event loop, each after a run of the learners alone")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "ingest.json")
    args = ap.parse_args()

    print(f"building {args.events} events (mix {MIX}) ...", flush=True)
    msgs = envelopes(make_events(args.events), args.envelope)
    memory = bench_in_memory(msgs)
    print(f"learners only (in memory):   {memory['learners_only_events_per_s']:>10,.0f} events/s")
    print(f"decode + learners (memory):  {memory['decode_and_learners_events_per_s']:>10,.0f} events/s")
    print(f"learners, codec model serving: "
          f"{memory['learners_with_codec_model_serving_events_per_s']:>8,.0f} events/s")
    decode = bench_decode(msgs)
    for topic, d in decode.items():
        print(f"decode {topic:<19}  {d['fast_us_per_event']:>6.2f} µs/event; strict types "
              f"alone {d['strict_us_per_event']:.2f} ({d['strict_over_fast']:.1f}x)")
    decoded, runs = decode_all(msgs), []
    for repeat in range(args.repeats):
        for loop in ("aio", "uvloop"):  # a fresh broker each, so all drain the same backlog
            # this machine's speed drifts by tens of percent within minutes: each pipeline run
            # is paired with the learners alone measured just before it
            alone, _ = learners_alone(decoded)
            with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
                create_topics(broker.bootstrap, 4)
                r = bench_pipeline(broker.bootstrap, msgs, Path(tmp) / "store", loop)
            r.update(loop=loop, learners_only_events_per_s_just_before=alone,
                     over_learners_only=r["events_per_s"] / alone)
            runs.append(r)
            print(f"full pipeline, {loop:<7}:     {r['events_per_s']:>10,.0f} events/s "
                  f"({r['events']} events in {r['seconds']:.1f}s, daemon RSS "
                  f"{r['daemon_rss_mb']:.0f} MB); learners alone just before: {alone:,.0f} "
                  f"events/s; ratio {r['over_learners_only']:.2f}", flush=True)
    loops = {loop: {"runs": [r for r in runs if r["loop"] == loop]} for loop in ("aio", "uvloop")}
    for summary in loops.values():
        summary["events_per_s"] = median(r["events_per_s"] for r in summary["runs"])
        summary["over_learners_only"] = median(r["over_learners_only"] for r in summary["runs"])
    best = max(loops, key=lambda loop: loops[loop]["events_per_s"])
    with EmbeddedBroker() as broker:
        noop = bench_faust_noop(broker.bootstrap, args.noop_messages)
        print(f"faust no-op, 1 event/msg:    {noop['messages_per_s']:>10,.0f} messages/s")
    ratios = [r["over_learners_only"] for r in runs]
    ratio = median(ratios)
    print(f"uvloop / aio (medians):      "
          f"{loops['uvloop']['events_per_s'] / loops['aio']['events_per_s']:>10.2f}")
    print(f"pipeline / learners-only:    {ratio:>10.2f}   (goal >= 0.8; median of {len(ratios)} "
          f"runs, each against the learners alone just before it; "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    over_noop = loops[best]["events_per_s"] / noop["messages_per_s"]
    print(f"pipeline / faust no-op:      {over_noop:>10.1f}x  ({best}, median run)")
    result = {"benchmark": "ingest", "machine": {"cpus": os.cpu_count(),
                                                 "python": platform.python_version(),
                                                 "platform": platform.platform()},
              "mix": MIX, "envelope_events": args.envelope, "in_memory": memory,
              "decode": decode,
              "pipeline_by_loop": loops, "faust_noop": noop,
              "ratios": {"pipeline_over_learners_only": ratio,
                         "pipeline_over_learners_only_range": [min(ratios), max(ratios)],
                         "pipeline_over_faust_noop": over_noop}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
