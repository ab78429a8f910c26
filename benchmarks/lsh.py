"""The MinHash LSH index at 1M entries: insert and query cost, recall, memory, against a linear
scan of the same signatures measured in the same run.

Signatures are 128 32-bit values, as nodes send them. 5% of the entries are planted
near-duplicates of an earlier entry (15% of the slots redrawn: J ≈ 0.85). At 10k, 100k and
``--entries`` indexed blocks, ``--queries`` planted near-duplicates are looked up with the
daemon's index (``DeduplicationOptimizer``, threshold 0.7) and with a numpy scan of every
signature; figures: µs per insert, query p50/p99, recall of the planted original, RSS.

    python benchmarks/lsh.py --entries 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pakit_stream.learners.dedup import DeduplicationOptimizer

HERE = Path(__file__).resolve().parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def signatures(n: int, seed: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """``n`` signatures; every 20th is a near-duplicate of a random earlier one."""
    rng = np.random.default_rng(seed)
    sigs = rng.integers(0, 2**32, size=(n, 128), dtype=np.uint32)
    planted = {}
    for i in range(20, n, 20):
        src = int(rng.integers(0, i))
        row = sigs[src].copy()
        slots = rng.choice(128, 19, replace=False)
        row[slots] = rng.integers(0, 2**32, 19, dtype=np.uint32)
        sigs[i] = row
        planted[i] = src
    return sigs, planted


def measure(index: DeduplicationOptimizer, sigs, planted, size: int, queries: int,
            threshold: float) -> dict:
    probes = [i for i in planted if i < size][-queries:]
    lsh_us, scan_us, lsh_found, scan_found = [], [], 0, 0
    for i in probes:
        t0 = time.perf_counter()
        hits = index.query(sigs[i], top_k=5, exclude=f"{i:064x}")
        lsh_us.append((time.perf_counter() - t0) * 1e6)
        lsh_found += any(int(h["block_hash"], 16) == planted[i] for h in hits)
        t0 = time.perf_counter()
        est = (sigs[:size] == sigs[i]).mean(axis=1)
        est[i] = 0
        top = np.argpartition(-est, 5)[:5]
        top = top[est[top] >= threshold]
        scan_us.append((time.perf_counter() - t0) * 1e6)
        scan_found += planted[i] in top
    return {"entries": size, "queries": len(probes),
            "lsh_query_us_p50": float(np.percentile(lsh_us, 50)),
            "lsh_query_us_p99": float(np.percentile(lsh_us, 99)),
            "scan_query_us_p50": float(np.percentile(scan_us, 50)),
            "scan_query_us_p99": float(np.percentile(scan_us, 99)),
            "lsh_recall": lsh_found / len(probes), "scan_recall": scan_found / len(probes),
            "scan_over_lsh_p50": float(np.percentile(scan_us, 50) / np.percentile(lsh_us, 50)),
            "rss_mb": rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lsh.json")
    args = ap.parse_args()
    rss0 = rss_mb()
    sigs, planted = signatures(args.entries)
    rss_sigs = rss_mb()
    index = DeduplicationOptimizer(threshold=args.threshold, capacity=args.entries)
    checkpoints = sorted({s for s in (10_000, 100_000, args.entries) if s <= args.entries})
    rows, done, insert_s = [], 0, 0.0
    for size in checkpoints:
        t0 = time.perf_counter()
        for i in range(done, size):
            index.add(f"{i:064x}", sigs[i])
        insert_s += time.perf_counter() - t0
        window_us = (time.perf_counter() - t0) * 1e6 / (size - done)
        done = size
        row = measure(index, sigs, planted, size, args.queries, args.threshold)
        row["insert_us_mean_last_window"] = window_us
        rows.append(row)
        print(f"{size:>9,} entries: insert {window_us:6.1f} µs | query LSH p50 {row['lsh_query_us_p50']:8.1f} "
              f"p99 {row['lsh_query_us_p99']:8.1f} µs, recall {row['lsh_recall']:.3f} | scan p50 "
              f"{row['scan_query_us_p50']:10.1f} µs, recall {row['scan_recall']:.3f} | scan/LSH "
              f"{row['scan_over_lsh_p50']:7.1f}x | RSS {row['rss_mb']:,.0f} MB", flush=True)
    result = {"benchmark": "lsh", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "threshold": args.threshold, "num_perm": 128,
              "inserts_per_s": args.entries / insert_s, "rss_mb_before": rss0,
              "rss_mb_signatures_alone": rss_sigs - rss0,
              "index_mb_per_million": (rows[-1]["rss_mb"] - rss_sigs) / args.entries * 1e6,
              "by_size": rows}
    print(f"inserts/s overall {result['inserts_per_s']:,.0f}; index memory "
          f"{result['index_mb_per_million']:,.0f} MB per million entries (signatures "
          f"{result['rss_mb_signatures_alone']:,.0f} MB apart)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
