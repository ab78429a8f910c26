"""``pakit-stream``: the daemon, its broker, the demo, replay and evaluation of real data, hints.

Every flag of ``run`` is also an environment variable (``PAKIT_STREAM_*``, see
``pakit-stream settings``); flags win.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pakit_stream.exceptions import ConfigError, PakitStreamError, UsageError
from pakit_stream.settings import Settings

# kept here rather than imported: the CLI starts without loading the replay stack
TRACE_FORMATS = ("oracle-general", "lines", "csv", "u32le", "u32be")

__all__ = ["main"]


def _settings(args) -> Settings:
    return Settings.from_env(broker=getattr(args, "broker", None),
                             web_host=getattr(args, "web_host", None),
                             web_port=getattr(args, "web_port", None),
                             data_dir=getattr(args, "data_dir", None))


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_run(args) -> int:
    from pakit_stream.daemon import run_daemon

    settings = _settings(args)
    _logging(args.loglevel)
    run_daemon(settings, loglevel=args.loglevel)
    return 0


def cmd_broker(args) -> int:
    from pakit_stream.broker import EmbeddedBroker, create_topics

    _logging("warning")
    # both stop it, also when started with SIGINT ignored (a background job of a shell without
    # job control), where Python installs no handler of its own
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with EmbeddedBroker(port=args.port) as broker:
            create_topics(broker.bootstrap, args.partitions)
            print(f"tansu broker listening on {broker.bootstrap} (Ctrl-C stops it)", flush=True)
            while broker.process.poll() is None:
                time.sleep(0.5)
            return 1  # the broker died on its own
    except KeyboardInterrupt:
        return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_demo(args) -> int:
    from pakit_stream.demo import run_demo

    _logging("warning")
    return run_demo(seconds=args.seconds, source=args.source, data_dir=args.data_dir,
                    web_port=args.web_port)


def cmd_experiment(args) -> int:
    from pakit_stream.experiment import check, load_workload, run_experiment

    _logging("warning")
    check(args.nodes, args.blocks)
    slices = int(args.seconds / args.slice_seconds) + 2
    workload = load_workload(args.trace, args.format, args.rtt, args.unit, args.files,
                             column=args.column, max_accesses=args.max_accesses,
                             max_slices=slices, max_blocks=args.max_blocks, seed=args.seed)
    run_experiment(workload, seconds=args.seconds, nodes=args.nodes, out=args.out,
                   data_dir=args.data_dir, metrics_port=args.metrics_port,
                   hint_timeout=args.hint_timeout_ms / 1e3, cache_blocks=args.cache_blocks,
                   blocks=args.blocks, seed=args.seed, slice_seconds=args.slice_seconds)
    return 0


def replay_source(args):
    """``(event_type, JSON bytes)`` pairs for ``replay``'s SOURCE, by ``--kind``."""
    from itertools import islice

    from pakit_stream import replay
    from pakit_stream.telemetry.publish import encoded, read_jsonl

    if args.kind == "jsonl":
        return islice(read_jsonl(args.source), args.limit)
    if args.kind == "files":
        events = replay.stored_events(args.source, [args.node_id], args.avg_size)
    elif args.kind == "trace":
        if not args.format:
            raise UsageError("replay --kind trace needs --format "
                             f"({'|'.join(replay.TRACE_FORMATS)})")
        ids, spans = replay.read_requests(args.source, args.format, column=args.column,
                                          limit=args.limit)
        events = replay.access_events(ids, args.node_id, args.cache_blocks,
                                      namespace=args.source.name, spans=spans)
    else:
        if not args.unit:
            raise UsageError(f"replay --kind {args.kind} needs --unit s|ms")
        matrix = replay.RttMatrix.load(args.source, args.unit, max_slices=args.max_slices)
        if args.kind == "peers":
            events = _peer_events(replay.PeerReplay(matrix, node=args.host, seed=args.seed),
                                  args.seed)
        else:
            from pakit_stream.learners.network import NetworkOptimizer
            from pakit_stream.replay.gossip import LOSSES, SIZES

            opt = NetworkOptimizer()
            events = replay.GossipReplay(matrix, seed=args.seed).rounds(
                SIZES, LOSSES, opt.actions, per_slice=10)
    return encoded(islice(events, args.limit))


def _peer_events(peers, seed: int):
    """Nodes explore uniformly, so every logged fetch serves an unbiased replay evaluation."""
    import random

    rng = random.Random(seed)
    for step in peers.steps():
        peer = rng.choice(step.candidates)
        yield peers.event(step, peer, *step.fetch(peer))


def cmd_replay(args) -> int:
    from pakit_stream.telemetry.publish import publish_events

    _logging("warning")
    events = replay_source(args)
    if args.jsonl_out:
        sent = 0
        with open(args.jsonl_out, "wb") as f:
            for _, payload in events:
                f.write(payload + b"\n")
                sent += 1
        print(json.dumps({"written": sent, "file": str(args.jsonl_out)}))
        return 0
    settings = Settings.from_env()
    sent = publish_events(events, args.broker or settings.broker, batch_size=args.batch_size,
                          **settings.kafka_config())
    print(json.dumps({"published": sent}))
    return 0


def cmd_evaluate(args) -> int:
    from pakit_stream.evaluation import evaluate

    opts = {"seeds": args.seeds}
    if args.learner in ("peers", "gossip"):
        if not args.unit:
            raise UsageError(f"evaluate {args.learner} needs --unit s|ms")
        opts.update(unit=args.unit, max_slices=args.max_slices)
    if args.learner == "prefetch":
        if not args.format:
            raise UsageError("evaluate prefetch needs --format " + "|".join(TRACE_FORMATS))
        opts.update(fmt=args.format, column=args.column, max_accesses=args.max_accesses,
                    max_test=args.max_test, epochs=args.epochs)
    if args.learner == "compression":
        opts.update(cpu_bytes_per_us=args.cpu_bytes_per_us, max_bytes=args.max_bytes,
                    repeats=args.repeats)
    if args.learner == "dedup":
        opts.update(avg_size=args.avg_size, max_blocks=args.max_blocks)
    if args.learner == "peers":
        opts.update(nodes=args.nodes, fetches_per_slice=args.fetches_per_slice)
    if args.learner == "gossip":
        opts.update(train_rounds=args.train_rounds, reps=args.reps)
    try:
        doc = evaluate(args.learner, args.data, args.out, **opts)
    except ImportError as exc:
        print(f"error: {exc.name} is missing; evaluation needs pip install 'pakit-stream[eval]'",
              file=sys.stderr)
        return 1
    h, v = doc["headline"], doc["verdict"]
    print(f"{args.learner}: {h['metric']} ({'higher' if h['higher_is_better'] else 'lower'} is better)")
    for method, row in doc["results"].items():
        print(f"  {method:28} {row.get(h['metric'])}")
    print(f"beats naive baseline ({v['naive_baseline']}): {v['beats_naive']}; "
          f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0


def cmd_results(args) -> int:
    from pakit_stream.evaluation import readme_section, update_readme

    files = [p / "results.json" if p.is_dir() else p for p in args.results]
    section = readme_section(files, args.readme.resolve().parent)
    if args.readme.exists() and not args.print:
        update_readme(args.readme, section)
        print(f"updated the Results section of {args.readme} from {len(files)} results")
    else:
        print(section)
    return 0


def cmd_hint(args) -> int:
    base = args.url.rstrip("/")
    if args.kind == "similar":
        if not args.block_hash:
            raise UsageError("hint similar needs --block-hash")
        req = urllib.request.Request(f"{base}/v1/hints/similar/{args.block_hash}?top_k={args.top_k}")
    else:
        if args.kind == "peer":
            try:
                context = json.loads(args.context)
            except ValueError:
                raise UsageError(f"hint peer --context is not JSON: {args.context!r}") from None
            body = {"node_id": args.node_id, "available_peers": args.peers or [],
                    "context": context}
        else:
            body = {"network_size": args.network_size, "avg_latency_ms": args.latency_ms,
                    "message_loss_rate": args.loss}
        req = urllib.request.Request(f"{base}/v1/hints/{args.kind}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: no daemon at {base}: {exc.reason}", file=sys.stderr)
        return 1


def cmd_models(args) -> int:
    from pakit_stream.registry import ModelRegistry

    store = ModelRegistry(_settings(args).data_dir)
    if args.action == "rollback":
        if not args.name:
            raise UsageError("models rollback needs a model name")
        version = store.rollback(args.name)
        print(json.dumps({"name": args.name, "serving": version}))
        return 0
    for name in ([args.name] if args.name else store.names()):
        serving = store.serving(name)
        for meta in store.versions(name):
            mark = "*" if meta["version"] == serving else " "
            acc = meta["metrics"].get("accuracy")
            acc = f"{acc:.4f}" if isinstance(acc, (int, float)) else "-"
            print(f"{mark} {name:24} {meta['version']:22} {meta['status']:12} accuracy={acc}")
    return 0


def cmd_settings(args) -> int:
    for var, default, help_ in Settings.describe():
        print(f"{var:42} {default:14} {help_}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pakit-stream", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (embedded broker unless --broker)")
    run.add_argument("--broker", help="Kafka HOST:PORT [PAKIT_STREAM_BROKER]")
    run.add_argument("--web-host", help="HTTP bind address [PAKIT_STREAM_WEB_HOST]")
    run.add_argument("--web-port", type=int, help="HTTP port [PAKIT_STREAM_WEB_PORT]")
    run.add_argument("--data-dir", type=Path, help="model store [PAKIT_STREAM_DATA_DIR]")
    run.add_argument("--loglevel", default="info", choices=["debug", "info", "warn", "error"])
    run.set_defaults(func=cmd_run)

    broker = sub.add_parser("broker", help="run the embedded tansu broker alone")
    broker.add_argument("--port", type=int, default=9092)
    broker.add_argument("--partitions", type=int, default=Settings().topic_partitions)
    broker.set_defaults(func=cmd_broker)

    demo = sub.add_parser("demo", help="broker + daemon + a node simulator on real local files")
    demo.add_argument("--seconds", type=float, default=60.0, help="how long nodes send telemetry")
    demo.add_argument("--source", type=Path, help="files to chunk (default: Python's stdlib)")
    demo.add_argument("--data-dir", type=Path, help="model store (default: a temporary folder)")
    demo.add_argument("--web-port", type=int, default=0, help="daemon HTTP port (0: a free one)")
    demo.set_defaults(func=cmd_demo)

    exp = sub.add_parser("experiment", help="nodes acting on hints against a control group, "
                         "on real workloads, live")
    exp.add_argument("--seconds", type=float, default=300.0, help="how long the nodes run")
    exp.add_argument("--nodes", type=int, default=8, help="nodes, an even number (half treated)")
    exp.add_argument("--out", type=Path, default=Path("experiment-results"),
                     help="folder for results.json, timeline.json, report.md, over_time.png")
    exp.add_argument("--trace", type=Path, help="block access trace (default: ../shared/data's "
                     "CloudPhysics trace, else a synthetic one over local files)")
    exp.add_argument("--format", choices=TRACE_FORMATS, help="format of --trace")
    exp.add_argument("--column", default="lbn", help="block-number column of a CSV trace")
    exp.add_argument("--rtt", type=Path, help="RTT matrices: directory or tar of NAME_t files "
                     "(default: ../shared/data's Seattle set, else a synthetic matrix)")
    exp.add_argument("--unit", choices=["s", "ms"], help="unit of --rtt")
    exp.add_argument("--files", type=Path, help="files cut into stored blocks (default: "
                     "../shared/data/corpora, else Python's stdlib)")
    exp.add_argument("--max-accesses", type=int, default=200_000, help="trace accesses read")
    exp.add_argument("--max-blocks", type=int, default=600, help="distinct stored blocks")
    exp.add_argument("--cache-blocks", type=int,
                     help="each node's LRU cache (default: 1%% of its trace segment's blocks)")
    exp.add_argument("--hint-timeout-ms", type=float, default=50.0, help="the nodes' deadline")
    exp.add_argument("--slice-seconds", type=float, default=1.0,
                     help="seconds per RTT time slice")
    exp.add_argument("--blocks", type=int, default=5, help="time blocks of the intervals (>= 3)")
    exp.add_argument("--metrics-port", type=int, default=6067,
                     help="live outcomes on this port's /metrics (0: any free port)")
    exp.add_argument("--data-dir", type=Path, help="daemon and spools (default: a temporary folder)")
    exp.add_argument("--seed", type=int, default=0)
    exp.set_defaults(func=cmd_experiment)

    replay = sub.add_parser("replay", help="publish real workloads (or a JSONL file) as telemetry")
    replay.add_argument("source", type=Path, help="file, directory or archive to replay")
    replay.add_argument("--kind", default="jsonl",
                        choices=["jsonl", "files", "trace", "peers", "gossip"],
                        help="jsonl: events as they are; files: FastCDC blocks, every codec "
                             "measured; trace: an access trace (--format); peers / gossip: an "
                             "RTT matrix (--unit)")
    replay.add_argument("--format", choices=TRACE_FORMATS,
                        help="trace format (--kind trace)")
    replay.add_argument("--column", default="lbn", help="block-number column of a CSV trace")
    replay.add_argument("--unit", choices=["s", "ms"], help="RTT unit (--kind peers|gossip)")
    replay.add_argument("--avg-size", type=int, default=16384, help="average chunk size (files)")
    replay.add_argument("--cache-blocks", type=int, default=1024, help="LRU size for cache_hit (trace)")
    replay.add_argument("--node-id", default="node-0")
    replay.add_argument("--host", type=int, default=0, help="requesting host (peers)")
    replay.add_argument("--max-slices", type=int, help="first RTT slices only")
    replay.add_argument("--limit", type=int, help="at most this many events")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--broker", help="Kafka HOST:PORT [PAKIT_STREAM_BROKER]")
    replay.add_argument("--batch-size", type=int, default=500, help="events per envelope")
    replay.add_argument("--jsonl-out", type=Path, help="write the events to a JSONL file instead")
    replay.set_defaults(func=cmd_replay)

    ev = sub.add_parser("evaluate", help="a learner on real data against its baselines")
    ev.add_argument("learner", choices=["compression", "prefetch", "peers", "gossip", "dedup"])
    ev.add_argument("--data", type=Path, nargs="+", required=True,
                    help="directories of files (compression, dedup), traces (prefetch), an RTT "
                         "directory or .tar.xz (peers, gossip)")
    ev.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, plots")
    ev.add_argument("--format", choices=TRACE_FORMATS,
                    help="trace format (prefetch)")
    ev.add_argument("--column", default="lbn", help="block-number column of CSV traces")
    ev.add_argument("--unit", choices=["s", "ms"], help="RTT unit (peers, gossip)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="one run per seed; figures are means with 95%% intervals")
    ev.add_argument("--cpu-bytes-per-us", type=float, default=1.0,
                    help="compression: price of a CPU µs in bytes (the cost's λ)")
    ev.add_argument("--repeats", type=int, default=5,
                    help="compression: timings per codec and block (their median is used)")
    ev.add_argument("--max-bytes", type=int, help="compression: bytes read per chunk size")
    ev.add_argument("--max-accesses", type=int, default=200_000, help="prefetch: accesses read per trace")
    ev.add_argument("--max-test", type=int, default=50_000, help="prefetch: test accesses per trace")
    ev.add_argument("--epochs", type=int, default=8, help="prefetch: GRU epochs")
    ev.add_argument("--nodes", type=int, default=8, help="peers: requesting hosts")
    ev.add_argument("--fetches-per-slice", type=int, default=20, help="peers: fetches per slice")
    ev.add_argument("--max-slices", type=int, help="peers, gossip: first RTT slices only")
    ev.add_argument("--train-rounds", type=int, default=40_000, help="gossip: logged broadcasts")
    ev.add_argument("--reps", type=int, default=30, help="gossip: test broadcasts per scenario")
    ev.add_argument("--avg-size", type=int, default=16384, help="dedup: average chunk size")
    ev.add_argument("--max-blocks", type=int, default=4000, help="dedup: distinct blocks compared")
    ev.set_defaults(func=cmd_evaluate)

    res = sub.add_parser("results", help="regenerate the README's Results section")
    res.add_argument("results", type=Path, nargs="+", help="results.json files or their folders")
    res.add_argument("--readme", type=Path, default=Path("README.md"))
    res.add_argument("--print", action="store_true", help="print the section, change nothing")
    res.set_defaults(func=cmd_results)

    hint = sub.add_parser("hint", help="ask a running daemon for a hint")
    hint.add_argument("kind", choices=["peer", "network", "similar"])
    hint.add_argument("--url", default=f"http://127.0.0.1:{Settings().web_port}")
    hint.add_argument("--node-id", default="cli")
    hint.add_argument("--peers", nargs="*", help="available peer ids (peer)")
    hint.add_argument("--context", default="{}", help="JSON context (peer)")
    hint.add_argument("--network-size", type=int, default=100)
    hint.add_argument("--latency-ms", type=float, default=50.0)
    hint.add_argument("--loss", type=float, default=0.0)
    hint.add_argument("--block-hash")
    hint.add_argument("--top-k", type=int, default=5)
    hint.set_defaults(func=cmd_hint)

    models = sub.add_parser("models", help="list model versions, or roll one back")
    models.add_argument("action", choices=["list", "rollback"])
    models.add_argument("name", nargs="?")
    models.add_argument("--data-dir", type=Path, help="model store [PAKIT_STREAM_DATA_DIR]")
    models.set_defaults(func=cmd_models)

    sub.add_parser("settings", help="list settings and their environment variables"
                   ).set_defaults(func=cmd_settings)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status.

    Every :class:`~pakit_stream.exceptions.PakitStreamError` is caught here, and nowhere else:
    ``error: MESSAGE`` goes to stderr, without a traceback. The status is 2 when the command was
    called wrongly (``UsageError``, ``ConfigError``: fix the flags or the environment), as for
    a flag argparse refuses, and 1 for any other (data that cannot be used, a broker, daemon or
    model that fails) and for an ``OSError`` (a file or socket the command was pointed at).
    Anything else is a bug, and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (PakitStreamError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
