"""The MinHash LSH index at 1M entries: memory, insert and query cost, recall, checkpoint
restore, against a linear scan of the same signatures measured in the same run.

Signatures are 128 32-bit values, as nodes send them. 5% of the entries are planted
near-duplicates of an earlier entry (19 of the 128 values redrawn: J ≈ 0.85). The index
(``DeduplicationOptimizer``, threshold 0.7, capacity ``--entries``) is filled in envelopes of
``--envelope`` fingerprints (``add_many``, as the daemon does); at 10k, 100k and ``--entries``
entries, ``--queries`` planted near-duplicates are looked up in it (top 5, the planted
original must be among them) and ``--scan-queries`` of them with a numpy scan of every
signature. A second index is filled one ``add`` at a time for the single-insert cost. Last,
30,000 identical fingerprints go in and one of them is looked up: the bounded worst case.

Goals (issue 10): index ≤ 500 MB at 1M entries, insert ≤ 10 µs per entry, query p99 ≤ 1 ms
and faster than the scan. Memory is the index's own arrays (``nbytes``) and the growth of RSS
while it fills, in MB of 2^20 bytes.

    python benchmarks/lsh.py --entries 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import time
from pathlib import Path

import numpy as np

from pakit_stream.learners.dedup import DeduplicationOptimizer

HERE = Path(__file__).resolve().parent
MB = 2**20
GOALS = {"index_mb": 500.0, "insert_us": 10.0, "query_p99_us": 1000.0}


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


def block_hashes(n: int, seed: int = 1) -> list[str]:
    """Random 64-hex block hashes, as SHA-256 gives them."""
    raw = np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)
    return [r.tobytes().hex() for r in raw]


def measure(index: DeduplicationOptimizer, sigs, hashes, planted, size: int, queries: int,
            scan_queries: int, threshold: float) -> dict:
    probes = [i for i in planted if i < size][-queries:]
    id_of = {hashes[i]: i for i in range(size)}
    lsh_us, scan_us, lsh_found, scan_found, links = [], [], 0, 0, []
    for i in probes:
        t0 = time.perf_counter()
        hits = index.query(sigs[i], top_k=5, exclude=hashes[i])
        lsh_us.append((time.perf_counter() - t0) * 1e6)
        links.append(index.last_query_links)
        lsh_found += any(id_of.get(h["block_hash"]) == planted[i] for h in hits)
    for i in probes[-scan_queries:]:
        t0 = time.perf_counter()
        est = (sigs[:size] == sigs[i]).mean(axis=1)
        est[i] = 0
        top = np.argpartition(-est, 5)[:5]
        top = top[est[top] >= threshold]
        scan_us.append((time.perf_counter() - t0) * 1e6)
        scan_found += planted[i] in top
    row = {"entries": size, "queries": len(probes), "scan_queries": len(scan_us),
           "lsh_query_us_p50": float(np.percentile(lsh_us, 50)),
           "lsh_query_us_p99": float(np.percentile(lsh_us, 99)),
           "lsh_links_mean": float(np.mean(links)),
           "scan_query_us_p50": float(np.percentile(scan_us, 50)),
           "scan_query_us_p99": float(np.percentile(scan_us, 99)),
           "lsh_recall": lsh_found / len(probes), "scan_recall": scan_found / len(scan_us)}
    row["scan_over_lsh_p50"] = row["scan_query_us_p50"] / row["lsh_query_us_p50"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--scan-queries", type=int, default=100,
                    help="queries the linear scan answers (it is slow)")
    ap.add_argument("--envelope", type=int, default=500, help="fingerprints per add_many")
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "lsh.json")
    args = ap.parse_args()
    n = args.entries
    rss0 = rss_mb()
    sigs, planted = signatures(n)
    hashes = block_hashes(n)
    rss_data = rss_mb()

    index = DeduplicationOptimizer(threshold=args.threshold, capacity=n)
    print(f"{index.bands} bands × {index.rows} rows; at most {index.bands * index.max_chain} "
          f"links and {index.max_candidates} signatures per query", flush=True)
    checkpoints = sorted({s for s in (10_000, 100_000, n) if s <= n})
    rows, done, batch_s = [], 0, 0.0
    for size in checkpoints:
        t0 = time.perf_counter()
        for start in range(done, size, args.envelope):
            end = min(size, start + args.envelope)
            index.add_many(hashes[start:end], sigs[start:end])
        window_s = time.perf_counter() - t0
        batch_s += window_s
        window_us = window_s * 1e6 / (size - done)
        done = size
        row = measure(index, sigs, hashes, planted, size, args.queries, args.scan_queries,
                      args.threshold)
        row["insert_batched_us_last_window"] = window_us
        row["index_mb"] = index.nbytes / MB
        row["rss_mb"] = rss_mb()
        rows.append(row)
        print(f"{size:>9,} entries: batched insert {window_us:5.2f} µs | LSH p50 "
              f"{row['lsh_query_us_p50']:7.1f} p99 {row['lsh_query_us_p99']:7.1f} µs, "
              f"recall {row['lsh_recall']:.3f} | scan p50 {row['scan_query_us_p50']:10.1f} µs, "
              f"recall {row['scan_recall']:.3f} | scan/LSH {row['scan_over_lsh_p50']:7.1f}x | "
              f"index {row['index_mb']:,.0f} MB, RSS {row['rss_mb']:,.0f} MB", flush=True)
    rss_index = rss_mb() - rss_data

    t0 = time.perf_counter()
    blob = pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = pickle.loads(blob)
    restore_s = time.perf_counter() - t0
    probes = [i for i in planted if i < n][-200:]
    same = all(restored.query(sigs[i], 5, hashes[i]) == index.query(sigs[i], 5, hashes[i])
               for i in probes)
    checkpoint = {"mb": len(blob) / MB, "save_s": save_s, "restore_s": restore_s,
                  "same_answers": same}
    del restored, blob
    print(f"checkpoint {checkpoint['mb']:,.0f} MB: pickled in {save_s:.2f} s, restored in "
          f"{restore_s:.2f} s, same answers on {len(probes)} queries: {same}", flush=True)

    single = DeduplicationOptimizer(threshold=args.threshold, capacity=n)
    t0 = time.perf_counter()
    last = max(0, n - 100_000)
    for i in range(last):
        single.add(hashes[i], sigs[i])
    t1 = time.perf_counter()
    for i in range(last, n):
        single.add(hashes[i], sigs[i])
    t2 = time.perf_counter()
    single_us, single_last_us = (t2 - t0) * 1e6 / n, (t2 - t1) * 1e6 / (n - last)
    same_state = all(np.array_equal(getattr(single, a), getattr(index, a))
                     for a in ("_heads", "_next", "_bh", "_sig8", "_raw", "_stamp"))
    del single
    print(f"single add: {single_us:.2f} µs per entry ({single_last_us:.2f} over the last "
          f"{n - last:,}); same index as batched: {same_state}", flush=True)

    twins = min(30_000, n)
    index.add_many([f"{i:064x}" for i in range(twins)], np.tile(sigs[0], (twins, 1)))
    worst_us = []
    for _ in range(200):
        t0 = time.perf_counter()
        index.query(sigs[0], top_k=5)
        worst_us.append((time.perf_counter() - t0) * 1e6)
    worst = {"identical": twins, "query_us_p50": float(np.percentile(worst_us, 50)),
             "query_us_p99": float(np.percentile(worst_us, 99)),
             "links": index.last_query_links, "candidates": index.last_query_candidates}
    print(f"{twins:,} identical fingerprints: query p50 {worst['query_us_p50']:.0f} µs, p99 "
          f"{worst['query_us_p99']:.0f} µs, {worst['links']} links, {worst['candidates']} "
          f"signatures verified", flush=True)

    top = rows[-1]
    batched_us = batch_s * 1e6 / n
    figures = {"index_mb": top["index_mb"], "insert_us_single": single_us,
               "insert_us_batched": batched_us, "query_p99_us": top["lsh_query_us_p99"]}
    goals = {"index_mb": figures["index_mb"] <= GOALS["index_mb"],
             "insert_us_single": single_us <= GOALS["insert_us"],
             "insert_us_batched": batched_us <= GOALS["insert_us"],
             "query_p99_us": figures["query_p99_us"] <= GOALS["query_p99_us"],
             "query_faster_than_scan": top["lsh_query_us_p99"] < top["scan_query_us_p50"]}
    result = {"benchmark": "lsh", "machine": {"cpus": os.cpu_count(),
                                              "python": platform.python_version()},
              "threshold": args.threshold, "num_perm": 128, "bands": index.bands,
              "rows": index.rows, "max_chain": index.max_chain,
              "max_candidates": index.max_candidates, "envelope": args.envelope,
              "rss_mb_before": rss0, "rss_mb_test_data": rss_data - rss0,
              "rss_mb_index": rss_index, **figures,
              "insert_us_single_last_100k": single_last_us, "single_equals_batched": same_state,
              "inserts_per_s_batched": n / batch_s, "checkpoint": checkpoint,
              "worst_case": worst, "goals": GOALS, "goals_met": goals, "by_size": rows}
    print(f"index {figures['index_mb']:,.0f} MB (RSS grew {rss_index:,.0f} MB; goal ≤ "
          f"{GOALS['index_mb']:.0f}) | insert {single_us:.2f} µs single, {batched_us:.2f} µs "
          f"batched (goal ≤ {GOALS['insert_us']:.0f}) | query p50 {top['lsh_query_us_p50']:.0f} "
          f"p99 {top['lsh_query_us_p99']:.0f} µs (goal ≤ {GOALS['query_p99_us']:.0f}), "
          f"{top['scan_over_lsh_p50']:,.0f}× faster than the scan at p50 | recall "
          f"{top['lsh_recall']:.3f} vs scan {top['scan_recall']:.3f}")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
