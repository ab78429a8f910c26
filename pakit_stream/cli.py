"""``pakit-stream``: run the daemon, the broker alone, the demo, a replay, or ask for a hint.

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

from pakit_stream.settings import Settings

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
    from pakit_stream.broker import EmbeddedBroker, ensure_topics
    from pakit_stream.events.schema import DLQ_TOPIC, TOPICS

    _logging("warning")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with EmbeddedBroker(port=args.port) as broker:
            ensure_topics(broker.bootstrap, [*TOPICS, DLQ_TOPIC], args.partitions)
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


def cmd_replay(args) -> int:
    from pakit_stream.telemetry.publish import publish_jsonl

    _logging("warning")
    sent = publish_jsonl(args.file, args.broker or Settings.from_env().broker,
                         batch_size=args.batch_size)
    print(json.dumps({"published": sent}))
    return 0


def cmd_hint(args) -> int:
    base = args.url.rstrip("/")
    if args.kind == "similar":
        if not args.block_hash:
            print("error: hint similar needs --block-hash", file=sys.stderr)
            return 2
        req = urllib.request.Request(f"{base}/v1/hints/similar/{args.block_hash}?top_k={args.top_k}")
    else:
        if args.kind == "peer":
            body = {"node_id": args.node_id, "available_peers": args.peers or [],
                    "context": json.loads(args.context)}
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
            print("error: models rollback needs a model name", file=sys.stderr)
            return 2
        try:
            version = store.rollback(args.name)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
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

    replay = sub.add_parser("replay", help="publish events from a JSONL file, as envelopes")
    replay.add_argument("file", type=Path)
    replay.add_argument("--broker", help="Kafka HOST:PORT [PAKIT_STREAM_BROKER]")
    replay.add_argument("--batch-size", type=int, default=500)
    replay.set_defaults(func=cmd_replay)

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
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
