"""Both batch nets on real data, against the baselines a node would otherwise use.

Codec choice (``--corpora``, e.g. ../shared/data/corpora): every file is cut into blocks of
4 KiB to 1 MiB, each block really compressed with zstd, lz4, snappy and brotli (cramjam). The
label is the codec of least cost, ``compressed bytes + CPU_BYTES_PER_US * (compress_us +
decompress_us)``. Files, not blocks, are split 70/30 between training and test, so no file
contributes to both. Methods: the per-block oracle, always zstd, always lz4, "zstd above
100 kB else lz4", and the trained MLP; figures: accuracy and chosen cost / oracle cost on the
test files.

Prefetching (``--traces``: LIRS-style gzip files with one block id per line, and/or the
CloudPhysics CSV): each trace is split in time, the first 70% to train, the last 30% to test.
Methods: LRU without prefetching, the Markov successor table, and the GRU, both prefetching
their top-``k`` predictions after every access. Figures: hit@5 (the next block is among the 5
predicted) and the LRU cache hit ratio at several cache sizes (share of distinct blocks).

    python benchmarks/evaluate_nets.py --corpora ../shared/data/corpora \\
        --traces ../shared/data/traces/lirs/multi1.trace.gz ../shared/data/traces/cloudphysics_io.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import time
from collections import OrderedDict
from pathlib import Path

import msgspec

from pakit_stream.batch.compression import CompressionPredictor
from pakit_stream.batch.prefetch import PrefetchEngine
from pakit_stream.events.schema import BlockStored
from pakit_stream.features import FeatureExtractor
from pakit_stream.learners.successors import SuccessorTable
from pakit_stream.simulate import codec_results, entropy, probe_ratio
from pakit_stream.training import ModelEvaluator, ModelTrainer, TrainingConfig, TrainingDataset
from pakit_stream.training.evaluator import hit_ratio_at

HERE = Path(__file__).resolve().parent
SIZES = (4096, 16384, 65536, 262144, 1048576)
CPU_BYTES_PER_US = 1.0  # set by --cpu-bytes-per-us


def cost(result: dict) -> float:
    return result["compressed_size"] + CPU_BYTES_PER_US * (result["compress_us"]
                                                           + result["decompress_us"])


def corpus_blocks(root: Path):
    """(file, features, {codec: cost}) for every block of every file under ``root``."""
    fx = FeatureExtractor()
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        off, i = 0, 0
        while off < len(data):
            size = SIZES[i % len(SIZES)]
            block = data[off:off + size]
            off, i = off + size, i + 1
            results = codec_results(block)
            event = msgspec.convert({
                "event_type": "block_stored", "node_id": "eval", "ts": 0.0,
                "block_hash": "0" * 64, "block_size": len(block), "block_depth": 0,
                "compression_algorithm": "zstd", "compression_ratio": 1.0,
                "entropy": round(entropy(block), 4), "probe_ratio": probe_ratio(block),
                "codec_results": results}, BlockStored)
            out.append((str(path.relative_to(root)), fx.extract_features(event),
                        {r["algorithm"]: cost(r) for r in results}, len(block)))
    return out


def evaluate_codec(root: Path, seed: int = 0) -> dict:
    blocks = corpus_blocks(root)
    files = sorted({f for f, *_ in blocks})
    random.Random(seed).shuffle(files)
    test_files = set(files[: max(1, int(len(files) * 0.3))])
    train = TrainingDataset([(x, min(c, key=c.get)) for f, x, c, _ in blocks if f not in test_files])
    test = [(x, c, n) for f, x, c, n in blocks if f in test_files]
    fit, val, _ = train.split(0.85, 0.15, 0.0, seed=seed)
    model = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=100, early_stopping_patience=8, batch_size=64,
                                learning_rate=3e-3)).train(model, fit, val)
    picks = {
        "oracle": lambda x, c, n: min(c, key=c.get),
        "always-zstd": lambda x, c, n: "zstd",
        "always-lz4": lambda x, c, n: "lz4",
        "zstd-above-100kB-else-lz4": lambda x, c, n: "zstd" if n > 100_000 else "lz4",
        "pakit-stream": None,
    }
    predicted = model.predict_labels([x for x, _, _ in test])
    oracle_cost = sum(min(c.values()) for _, c, _ in test)
    results = {}
    for name, pick in picks.items():
        chosen = predicted if pick is None else [pick(x, c, n) for x, c, n in test]
        total = sum(c[a] for a, (_, c, _) in zip(chosen, test))
        acc = sum(a == min(c, key=c.get) for a, (_, c, _) in zip(chosen, test)) / len(test)
        results[name] = {"accuracy": acc, "cost_over_oracle": total / oracle_cost}
    report = ModelEvaluator().evaluate(model, [(x, min(c, key=c.get)) for x, c, _ in test])
    return {"blocks": len(blocks), "train_blocks": len(train), "test_blocks": len(test),
            "test_files": sorted(test_files), "label_share": _shares(train.labels),
            "results": results, "per_class": report["per_class"]}


def _shares(labels):
    counts = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return {k: v / len(labels) for k, v in sorted(counts.items())}


def read_trace(path: Path) -> list[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt").read().split()
    if path.suffix == ".csv":
        with open(path) as f:
            return [row["lbn"] for row in csv.DictReader(f)]
    raise SystemExit(f"{path}: unknown trace format")


def cache_hit_ratio(test: list[str], capacity: int, predict=None, k: int = 2) -> float:
    cache: OrderedDict[str, None] = OrderedDict()
    hits = 0
    history: list[str] = []

    def put(b):
        cache[b] = None
        cache.move_to_end(b)
        if len(cache) > capacity:
            cache.popitem(last=False)

    for b in test:
        if b in cache:
            hits += 1
            cache.move_to_end(b)
        else:
            put(b)
        history.append(b)
        if predict is not None:
            for p in predict(history[-8:], k):
                if p not in cache:
                    put(p)
    return hits / len(test)


def evaluate_prefetch(path: Path, max_test: int = 20_000) -> dict:
    seq = read_trace(path)
    cut = int(len(seq) * 0.7)
    train, test = seq[:cut], seq[cut:cut + max_test]
    markov = SuccessorTable(capacity=1_000_000)
    markov.learn_sequence(train)
    gru = PrefetchEngine(max_vocab_size=10_000)
    gru.train([train], TrainingConfig(num_epochs=8, batch_size=256, learning_rate=3e-3,
                                      early_stopping_patience=2))
    from pakit_stream.serving.prefetch import ServedPrefetchModel

    tmp = HERE / "results" / f".{path.stem}.safetensors"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    gru.save(tmp)
    served = ServedPrefetchModel(tmp)
    tmp.unlink()

    def markov_predict(history, k):
        return markov.successors(history[-1], k)

    def gru_predict(history, k):
        if served.knows(history[-1]):
            return served.predict(history, k)
        return markov.successors(history[-1], k)

    distinct = len(set(seq))
    sizes = {f"{p:g}%": max(1, int(distinct * p / 100)) for p in (1, 5, 10)}
    out = {"accesses": len(seq), "distinct": distinct, "test_accesses": len(test), "results": {}}
    for name, predict in (("lru-no-prefetch", None), ("markov-successor", markov_predict),
                          ("pakit-stream", gru_predict)):
        row = {}
        if predict is not None:
            row["hit_at_5"] = hit_ratio_at(predict, [test])
        for label, capacity in sizes.items():
            row[f"hit_ratio_cache_{label}"] = cache_hit_ratio(test, capacity, predict)
        out["results"][name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", type=Path)
    ap.add_argument("--traces", type=Path, nargs="*", default=[])
    ap.add_argument("--cpu-bytes-per-us", type=float, default=1.0,
                    help="cost of CPU time in bytes per microsecond (the codec label's lambda)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "evaluate_nets.json")
    args = ap.parse_args()
    global CPU_BYTES_PER_US
    CPU_BYTES_PER_US = args.cpu_bytes_per_us
    report = {"codec_cost": f"bytes + {CPU_BYTES_PER_US} * (compress_us + decompress_us)"}
    if args.corpora:
        t0 = time.time()
        report["compression"] = codec = evaluate_codec(args.corpora)
        print(f"codec: {codec['test_blocks']} test blocks from {len(codec['test_files'])} held-out "
              f"files ({time.time() - t0:.0f}s); labels {codec['label_share']}")
        for name, r in codec["results"].items():
            print(f"  {name:28} accuracy {r['accuracy']:6.1%}   cost/oracle {r['cost_over_oracle']:.4f}")
    report["prefetch"] = {}
    for path in args.traces:
        t0 = time.time()
        pf = report["prefetch"][path.name] = evaluate_prefetch(path)
        print(f"prefetch {path.name}: {pf['accesses']} accesses, {pf['distinct']} distinct "
              f"({time.time() - t0:.0f}s)")
        for name, r in pf["results"].items():
            figures = "  ".join(f"{k} {v:.3f}" for k, v in r.items())
            print(f"  {name:18} {figures}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
