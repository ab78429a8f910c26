"""Hint latency, p50 and p99: in-process (``HintService``) vs over HTTP at a fixed rate.

One run: events of the ingest mix (``benchmarks/ingest.py``) warm the learners, then each
hint kind is asked ``--calls`` times in-process, and over HTTP from a ``pakit-stream run``
daemon (embedded broker, same events) at ``--rate`` requests/s for ``--seconds``: once idle,
once while the daemon ingests ``--load-rate`` events/s. The HTTP client is open-loop: latency
counts from the time a request was *due*, so a slow answer that delays the next request is
charged to it (no coordinated omission). Hints share the event loop with ingestion (applied
in slices) and the checkpoint (a fork), so the loaded p99 shows how long those hold it.

The baseline, in the same run and under the same load: a no-op HTTP server (aiohttp, as under
Faust's views) in a process of its own, with no learners and no ingestion, asked the same
requests by the same client at the same rate, in turn with the daemon. Its latency is the floor
that this machine, its scheduler and a Python client put under any hint served over HTTP.

    python benchmarks/hints.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import multiprocessing
import socket
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from ingest import envelopes, make_events

from pakit_stream.broker import EmbeddedBroker, create_topics, free_port
from pakit_stream.demo import DaemonProcess
from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.serving.hints import HintService
from pakit_stream.settings import Settings
from pakit_stream.telemetry.publish import make_producer

HERE = Path(__file__).resolve().parent


def requests(events: dict[str, list[bytes]]) -> dict[str, tuple[str, bytes | None]]:
    """One realistic request per hint kind: (path, JSON body or None for GET)."""
    fetch = msgspec.json.decode(events["pakit.peers"][0])
    fp = msgspec.json.decode(events["pakit.fingerprints"][0])
    reads = [msgspec.json.decode(e)["block_hash"] for e in events["pakit.access"][:8]]
    enc = msgspec.json.encode
    return {
        "peer": ("/v1/hints/peer", enc({"node_id": "node-1", "available_peers": fetch["candidates"],
                                        "context": fetch["context"], "block_size": 262144})),
        "network": ("/v1/hints/network", enc({"network_size": 200, "avg_latency_ms": 40.0,
                                              "message_loss_rate": 0.05})),
        "compression": ("/v1/hints/compression", enc({"block_size": 65536, "block_depth": 2,
                                                      "entropy": 5.1, "probe_ratio": 0.6})),
        "prefetch": ("/v1/hints/prefetch", enc({"node_id": "node-1", "recent_accesses": reads})),
        "similar": (f"/v1/hints/similar/{fp['block_hash']}?top_k=5", None),
    }


def in_process(msgs, reqs, calls: int) -> dict[str, dict[str, float]]:
    pipeline = Pipeline(Settings(), Metrics())
    for offset, (topic, value, _) in enumerate(msgs):
        pipeline.handle(topic, 0, offset, value)
    hints = HintService(pipeline)
    call = {"peer": hints.peer, "network": hints.network, "compression": hints.compression,
            "prefetch": hints.prefetch}
    out = {}
    for kind, (path, body) in reqs.items():
        if kind == "similar":
            block = path.split("/")[-1].split("?")[0]
            fn = lambda: hints.similar(block, 5)  # noqa: E731
        else:
            fn = lambda f=call[kind], b=body: f(b)  # noqa: E731
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[kind] = _percentiles(times)
    return out


def noop_server(port: int) -> None:
    """The floor: read each request whole and answer a constant, as fast as aiohttp can."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"source":"noop"}', content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class _Floor:
    """Where the no-op server listens (``ask`` takes anything with a ``web_port``)."""

    def __init__(self) -> None:
        self.web_port = free_port()
        self.process = multiprocessing.Process(target=noop_server, args=(self.web_port,),
                                               daemon=True)

    def __enter__(self) -> _Floor:
        self.process.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.web_port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.join()


class _Port:
    def __init__(self, port: int) -> None:
        self.web_port = port


def phase(daemon, replica, floor, reqs, rate: float, seconds: float) -> tuple[dict, ...]:
    """Each hint kind asked of the daemon's API port, of its hint replicas' port, then of the
    no-op server, in turn."""
    hints, replicas, noop = {}, {}, {}
    for kind, (path, body) in reqs.items():
        hints[kind] = ask(daemon, path, body, rate, seconds)
        replicas[kind] = ask(replica, path, body, rate, seconds)
        noop[kind] = ask(floor, path, body, rate, seconds)
    return hints, replicas, noop


def over_http(msgs, reqs, rate: float, seconds: float, load_rate: float,
              load_nice: int = 0) -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker, _Floor() as floor:
        if load_nice:  # the broker stands for a Kafka cluster on other machines
            os.setpriority(os.PRIO_PROCESS, broker.process.pid, load_nice)
        create_topics(broker.bootstrap, 2)
        producer = make_producer(broker.bootstrap)
        counts: dict[str, int] = {}
        for topic, value, n in msgs:
            producer.send(topic, value)
            counts[topic] = counts.get(topic, 0) + n
        producer.flush()
        replica = _Port(free_port())
        daemon = DaemonProcess(broker.bootstrap, Path(tmp) / "store",
                               env={"PAKIT_STREAM_TOPIC_PARTITIONS": "2",
                                    "PAKIT_STREAM_HINT_PORT": str(replica.web_port)}).start()
        try:
            daemon.wait_applied(counts, timeout=300)
            lag = loop_lag(daemon)
            out = dict(zip(("idle", "replica_idle", "floor_idle"),
                           phase(daemon, replica, floor, reqs, rate, seconds)))
            lag, out["loop_lag_idle"] = loop_lag(daemon), lag_share(lag, loop_lag(daemon))
            stop = multiprocessing.Event()
            feeder = multiprocessing.Process(target=feed, args=(broker.bootstrap, msgs, load_rate,
                                                                stop, load_nice))
            feeder.start()  # its own process: the client's timing must not share a GIL with it
            try:
                out.update(zip(("loaded", "replica_loaded", "floor_loaded"),
                               phase(daemon, replica, floor, reqs, rate, seconds)))
            finally:
                stop.set()
                feeder.join()
            out["loop_lag_loaded"] = lag_share(lag, loop_lag(daemon))
            out["loaded_applied_events"] = sum(daemon.get("/health")["applied"].values())
            metrics = daemon.get("/metrics")
            out["gc_pause_seconds"] = {  # collections hold the loop as long as they run
                line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                if line.startswith("pakit_stream_gc_pause_seconds_") and "le=" not in line
                and "_created" not in line}
            for name in ("checkpoint_seconds", "checkpoint_hold_seconds",
                         "hint_replica_hold_seconds"):
                out[name] = {  # the loop is held only for the hold; the rest is the child's
                    line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                    if line.startswith(f"pakit_stream_{name}_") and "{" not in line}
            return out
        finally:
            daemon.stop()
            producer.close()


def loop_lag(daemon) -> dict[float, float]:
    """The daemon's event-loop lag histogram (``pakit_stream_event_loop_lag_seconds``): how
    late a timer due every 10 ms ran, cumulative count by upper bound."""
    out = {}
    for line in daemon.get("/metrics").splitlines():
        if line.startswith("pakit_stream_event_loop_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[float(le)] = float(line.split()[-1])
    return out


def lag_share(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Of the loop-lag samples between two readings, the share later than 1, 5 and 25 ms: the
    part of a hint's tail the loop itself explains (the rest is the OS giving the daemon's
    process no core, on a machine it shares with the broker, the feeder and the client)."""
    total = after[float("inf")] - before[float("inf")]
    return {"samples": total, **{f"over_{int(b * 1000)}ms": 1 - (after[b] - before[b]) / total
                                 for b in (1e-3, 5e-3, 2.5e-2)}} if total else {"samples": 0}


def feed(bootstrap: str, msgs, events_per_s: float, stop, nice: int = 0) -> None:
    """Produce the warm-up envelopes again, round and round, at ``events_per_s`` (at
    ``nice``: the feeder stands for nodes on other machines)."""
    if nice:
        os.nice(nice)
    producer = make_producer(bootstrap)
    start, sent, i = time.perf_counter(), 0, 0
    while not stop.is_set():
        topic, value, n = msgs[i % len(msgs)]
        producer.send(topic, value)
        sent, i = sent + n, i + 1
        pause = start + sent / events_per_s - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    producer.flush()
    producer.close()


def ask(daemon, path: str, body: bytes | None, rate: float, seconds: float) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.web_port, timeout=10)
    interval, n = 1.0 / rate, int(rate * seconds)
    start = time.perf_counter()
    times, errors = [], 0
    for i in range(n):
        due = start + i * interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        errors += resp.status != 200
        times.append(time.perf_counter() - due)
    conn.close()
    return {**_percentiles(times), "errors": errors, "requests": n}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "mean_us": float(us.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="events that warm the learners")
    ap.add_argument("--calls", type=int, default=5000, help="in-process calls per hint kind")
    ap.add_argument("--rate", type=float, default=200.0, help="HTTP requests per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="HTTP seconds per hint kind")
    ap.add_argument("--load-rate", type=float, default=10_000.0,
                    help="events/s the daemon ingests during the loaded phase")
    ap.add_argument("--load-nice", type=int, default=0,
                    help="run the broker and the event feeder at this nice value: on a "
                         "machine of its own, the daemon would not share its cores with them")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "hints.json")
    args = ap.parse_args()
    events = make_events(args.events)
    msgs = envelopes(events, 500)
    reqs = requests(events)
    local = in_process(msgs, reqs, args.calls)
    http_ = over_http(msgs, reqs, args.rate, args.seconds, args.load_rate, args.load_nice)
    idle, loaded = http_["idle"], http_["loaded"]
    print(f"{'hint':12} {'in-process p50/p99 µs':>22} {'HTTP idle p50/p99 µs':>22} "
          f"{'HTTP loaded p50/p99 µs':>24} {'idle/in-process p50':>20}")
    for kind in reqs:
        a, b, c = local[kind], idle[kind], loaded[kind]
        print(f"{kind:12} {a['p50_us']:>10,.0f} / {a['p99_us']:<9,.0f} {b['p50_us']:>9,.0f} / "
              f"{b['p99_us']:<10,.0f} {c['p50_us']:>9,.0f} / {c['p99_us']:<12,.0f} "
              f"{b['p50_us'] / a['p50_us']:>8.1f}x  errors {b['errors'] + c['errors']}")
    floor = {}
    for label, key in (("its hint replicas (PAKIT_STREAM_HINT_PORT)", "replica"),
                       ("a no-op aiohttp server (own process)", "floor")):
        print(f"the same requests of {label}, in turn with the daemon:")
        for kind in reqs:
            b, c = http_[f"{key}_idle"][kind], http_[f"{key}_loaded"][kind]
            print(f"{kind:12} {'':>22} {b['p50_us']:>9,.0f} / {b['p99_us']:<10,.0f} "
                  f"{c['p50_us']:>9,.0f} / {c['p99_us']:<12,.0f} errors {b['errors'] + c['errors']}")
    print("p99 over the no-op server's (idle, loaded):")
    for kind in reqs:
        noop = (http_["floor_idle"][kind]["p99_us"], http_["floor_loaded"][kind]["p99_us"])
        floor[kind] = {f"{name}_{phase_}_p99": http_[f"{prefix}{phase_}"][kind]["p99_us"] / base
                       for name, prefix in (("api", ""), ("replica", "replica_"))
                       for phase_, base in zip(("idle", "loaded"), noop)}
        f = floor[kind]
        print(f"{kind:12} API port {f['api_idle_p99']:.1f}x, {f['api_loaded_p99']:.1f}x; "
              f"replicas {f['replica_idle_p99']:.1f}x, {f['replica_loaded_p99']:.1f}x")
    print(f"daemon checkpoints: {http_['checkpoint_seconds']}")
    print(f"event loop held by checkpoints: {http_['checkpoint_hold_seconds']}")
    print(f"garbage collections: {http_['gc_pause_seconds']}")
    print(f"event loop lag (a 10 ms timer's delay), idle: {http_['loop_lag_idle']}; "
          f"loaded: {http_['loop_lag_loaded']}")
    result = {"benchmark": "hints", "machine": {"cpus": os.cpu_count(),
                                                "python": platform.python_version()},
              "warm_events": args.events, "rate_per_s": args.rate, "seconds_per_kind": args.seconds,
              "load_events_per_s": args.load_rate, "load_nice": args.load_nice, "in_process": local, "http": http_,
              "ratios": {k: idle[k]["p50_us"] / local[k]["p50_us"] for k in reqs},
              "over_noop_server": floor}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
