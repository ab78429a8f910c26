"""Garbage-collection pauses while the learners take the ingest mix, at several gen-0
thresholds: how often each generation is collected and how long a collection holds the loop.

    python benchmarks/gc_pauses.py --events 300000

In memory, one process, one fresh pipeline per threshold, the same decoded events (what was
alive before is frozen, as the daemon's checkpoints freeze it). The daemon runs at
``gc.set_threshold(50_000, 20, 100)`` (``pakit_stream/daemon/run.py``); lower gen-0 thresholds
shorten each young collection but bring older ones back. Prints, per threshold, the count,
mean and longest pause of each generation and the learners' events/s, and writes them to
``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

from ingest import decode_all, envelopes, make_events

from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

HERE = Path(__file__).resolve().parent


def pauses(decoded, threshold: int) -> dict:
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 100)
    held: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            held[info["generation"]].append((time.perf_counter() - started[0]) * 1e3)

    gc.callbacks.append(timed)
    try:
        pipeline = Pipeline(Settings(), Metrics())
        t0 = time.perf_counter()
        for topic, events in decoded:
            pipeline.apply(topic, events)
        seconds = time.perf_counter() - t0
    finally:
        gc.callbacks.remove(timed)
        del pipeline
        gc.unfreeze()
        gc.collect()
    n = sum(len(e) for _, e in decoded)
    return {"events_per_s": n / seconds,
            "generations": {g: {"count": len(ms), "mean_ms": sum(ms) / len(ms) if ms else 0.0,
                                "max_ms": max(ms, default=0.0)} for g, ms in held.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--thresholds", type=int, nargs="+",
                    default=[700, 5_000, 10_000, 20_000, 50_000])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gc_pauses.json")
    args = ap.parse_args()
    decoded = decode_all(envelopes(make_events(args.events), 500))
    out = {}
    for threshold in args.thresholds:
        r = out[threshold] = pauses(decoded, threshold)
        cells = "   ".join(f"gen {g}: {v['count']:>4}, {v['mean_ms']:5.1f} / {v['max_ms']:5.1f} ms"
                           for g, v in r["generations"].items())
        print(f"gen-0 threshold {threshold:>6}: {cells}   {r['events_per_s']:>8,.0f} events/s",
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "gc_pauses", "events": args.events,
                                    "by_threshold": out,
                                    "machine": {"cpus": os.cpu_count(),
                                                "python": platform.python_version()}},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
