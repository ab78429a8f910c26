"""Learners applied in slices: whole envelopes, against 0.5 ms slices of the five topics in
turn (as the daemon's agents ran before messages took turns), against 0.5 ms slices of one
message at a time (as they run now). In memory, no Kafka.

    python benchmarks/slices.py --events 150000

The three ways run in one process on three pipelines, the same envelopes in the same order,
alternating envelope group by envelope group (the order of the ways reversed every other
group), so that the machine's drift falls on all three alike. Prints seconds per way and
their ratios to whole envelopes, and writes them to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from ingest import MIX, decode_all, envelopes, make_events

from pakit_stream.metrics import Metrics
from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

HERE = Path(__file__).resolve().parent
WAYS = ("whole", "interleaved", "one_at_a_time")


def per_event_s(decoded) -> dict[str, float]:
    """Seconds per event of each topic, measured whole (what sizes the slices)."""
    p, spent, count = Pipeline(Settings(), Metrics()), {}, {}
    for topic, events in decoded[: len(decoded) // 4]:
        started = time.perf_counter()
        p.apply(topic, events)
        spent[topic] = spent.get(topic, 0.0) + time.perf_counter() - started
        count[topic] = count.get(topic, 0) + len(events)
    return {t: spent[t] / count[t] for t in spent}


def apply(pipeline: Pipeline, group, way: str, size: dict[str, int]) -> None:
    if way == "whole":
        for topic, events in group:
            pipeline.apply(topic, events)
        return
    work = [(topic, events, 0) for topic, events in group]
    if way == "one_at_a_time":
        for topic, events, _ in work:
            for i in range(0, len(events), size[topic]):
                pipeline.apply(topic, events[i:i + size[topic]], first=i)
        return
    while work:  # one slice of each message in turn
        left = []
        for topic, events, i in work:
            pipeline.apply(topic, events[i:i + size[topic]], first=i)
            if i + size[topic] < len(events):
                left.append((topic, events, i + size[topic]))
        work = left


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--envelope", type=int, default=500, help="events per Kafka message")
    ap.add_argument("--slice-s", type=float, default=Settings().apply_slice_s)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "slices.json")
    args = ap.parse_args()

    decoded = decode_all(envelopes(make_events(args.events), args.envelope))
    size = {t: max(1, int(args.slice_s / s)) for t, s in per_event_s(decoded).items()}
    pipelines = {way: Pipeline(Settings(), Metrics()) for way in WAYS}
    seconds = dict.fromkeys(WAYS, 0.0)
    groups = [decoded[i:i + len(MIX)] for i in range(0, len(decoded), len(MIX))]
    for g, group in enumerate(groups):
        for way in (WAYS if g % 2 else WAYS[::-1]):
            started = time.perf_counter()
            apply(pipelines[way], group, way, size)
            seconds[way] += time.perf_counter() - started
    for way in WAYS:
        print(f"{way:14} {seconds[way]:7.2f} s   {seconds[way] / seconds['whole']:5.2f}x whole")
    print(f"slice sizes (events): {size}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "slices", "events": args.events, "envelope_events": args.envelope,
        "slice_s": args.slice_s, "slice_events": size, "seconds": seconds,
        "over_whole": {w: seconds[w] / seconds["whole"] for w in WAYS},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()}}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
