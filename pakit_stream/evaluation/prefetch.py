"""Next-block prefetching on real access traces: the daemon's prefetch hint (the GRU's picks
interleaved with the online successor table's) against LRU alone, next-N sequential (by the
request's own size, where the trace records it) and a Markov successor table.

Each trace is split in time: the first 70% trains, the accesses after it test (at most
``max_test``). The batch GRU is frozen during the test; the online tables (the Markov baseline
and the GRU's fallback) keep learning test-then-train, as the daemon's do: each prediction is
made before its outcome is seen. After every access a method proposes its top ``k`` next
blocks; ``depth`` of them are prefetched into an LRU cache of 1–10% of the trace's distinct
blocks.

Figures: hit ratio per cache size; hit@k (the next block is proposed); precision@k (share of
the proposals read within the next ``k`` accesses); prefetch coverage (misses of plain LRU that
a prefetch turned into hits); useless prefetches (prefetched blocks evicted unread, per
prefetch issued).
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from pakit_stream.evaluation.report import OURS, Evaluation, figure, save
from pakit_stream.learners.successors import SuccessorTable
from pakit_stream.replay.traces import read_requests

__all__ = ["run", "simulate_cache", "CACHE_SHARES"]

CACHE_SHARES = (0.01, 0.02, 0.05, 0.1)
NONE = "lru-no-prefetch"


def simulate_cache(accesses: list[str], proposals: list[list[str]] | None, capacity: int,
                   depth: int) -> dict[str, float]:
    """Replay ``accesses`` through an LRU cache of ``capacity`` blocks, prefetching the first
    ``depth`` proposals after each access (``proposals[i]`` follows ``accesses[i]``)."""
    cache: OrderedDict[str, bool] = OrderedDict()  # block -> prefetched and not yet read
    hits = prefetch_hits = issued = useless = 0

    def insert(block: str, prefetched: bool) -> None:
        nonlocal useless
        cache[block] = prefetched
        if len(cache) > capacity:
            _, unread = cache.popitem(last=False)
            useless += unread

    for i, block in enumerate(accesses):
        if block in cache:
            hits += 1
            prefetch_hits += cache[block]
            cache[block] = False
            cache.move_to_end(block)
        else:
            insert(block, False)
        if proposals is not None:
            for p in proposals[i][:depth]:
                if p not in cache:
                    issued += 1
                    insert(p, True)
    n = len(accesses)
    return {"hit_ratio": hits / n, "prefetch_hits": prefetch_hits, "issued": issued,
            "useless": useless}


def _proposals(test: list[str], k: int, propose, learn=None) -> list[list[str]]:
    out = []
    for i, block in enumerate(test):
        if learn is not None:
            learn(block)  # the access just happened: learn it, then propose what follows
        out.append(propose(test[max(0, i - 7):i + 1], k))
    return out


def _precision_hit(test: list[str], props: list[list[str]], k: int) -> tuple[float, float]:
    n = len(test) - 1
    hit = sum(test[i + 1] in props[i][:k] for i in range(n)) / n
    prec = sum(len(set(props[i][:k]) & set(test[i + 1:i + 1 + k])) for i in range(n)) / (n * k)
    return hit, prec


def evaluate_trace(ids: np.ndarray, *, k: int = 5, depth: int = 2, max_test: int = 50_000,
                   epochs: int = 8, train_share: float = 0.7, seed: int = 0,
                   spans: np.ndarray | None = None) -> dict[str, Any]:
    from pakit_stream.batch.prefetch import PrefetchEngine
    from pakit_stream.serving.prefetch import ServedPrefetchModel, propose
    from pakit_stream.training import TrainingConfig

    seq = [str(int(b)) for b in ids]
    cut = int(len(seq) * train_share)
    train, test = seq[:cut], seq[cut:cut + max_test]
    test_spans = ([1] * len(test) if spans is None
                  else [int(x) for x in spans[cut:cut + max_test]])
    if len(train) < 10 or len(test) < 10:
        raise ValueError(f"trace too short to split ({len(seq)} accesses)")

    markov = SuccessorTable(capacity=1_000_000)
    markov.learn_sequence(train, node_id="eval")
    fallback = SuccessorTable(capacity=1_000_000)
    fallback.learn_sequence(train, node_id="eval")
    gru = PrefetchEngine(max_vocab_size=10_000)
    gru.train([train], TrainingConfig(num_epochs=epochs, batch_size=256, learning_rate=3e-3,
                                      early_stopping_patience=2, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        gru.save(Path(tmp) / "prefetch.safetensors")
        served = ServedPrefetchModel(Path(tmp) / "prefetch.safetensors")

    def ours(recent, k):  # exactly the daemon's prefetch hint
        return propose(served, fallback, recent, k)[0]

    def sequential(i):  # the next k requests of the same size, back to back
        b, span = int(test[i]), test_spans[i]
        return [str(b + j * span) for j in range(1, k + 1)]

    props = {
        NONE: None,
        "next-n-sequential": [sequential(i) for i in range(len(test))],
        "markov-successor": _proposals(test, k, lambda r, k: markov.successors(r[-1], k),
                                       lambda b: markov.observe("eval", b)),
        OURS: _proposals(test, k, ours, lambda b: fallback.observe("eval", b)),
    }
    distinct = len(set(seq))
    caps = {s: max(1, int(distinct * s)) for s in CACHE_SHARES}
    results: dict[str, dict[str, Any]] = {}
    baseline_misses = {}
    for method, p in props.items():
        row: dict[str, Any] = {}
        for share, cap in caps.items():
            sim = simulate_cache(test, p, cap, depth)
            label = f"{share * 100:g}%"
            row[f"hit_ratio_cache_{label}"] = sim["hit_ratio"]
            if method == NONE:
                baseline_misses[share] = len(test) * (1 - sim["hit_ratio"])
            elif share == 0.01:
                row["prefetch_coverage"] = sim["prefetch_hits"] / max(baseline_misses[share], 1)
                row["useless_prefetch_share"] = sim["useless"] / max(sim["issued"], 1)
                row["prefetches_per_access"] = sim["issued"] / len(test)
        if p is not None:
            row[f"hit_at_{k}"], row[f"precision_at_{k}"] = _precision_hit(test, p, k)
        results[method] = row
    rolling = {}
    for method in ("markov-successor", OURS):
        hits = np.array([test[i + 1] in props[method][i] for i in range(len(test) - 1)], float)
        w = max(1, len(hits) // 50)
        rolling[method] = np.convolve(hits, np.ones(w) / w, mode="valid")[::w].tolist()
    return {"accesses": len(seq), "distinct": distinct, "train_accesses": len(train),
            "test_accesses": len(test), "cache_blocks": {f"{s * 100:g}%": c for s, c in caps.items()},
            "results": results, "rolling_hit": rolling}


def run(paths: list[Path], out: Path, *, fmt: str, column: str = "lbn", seed: int = 0,
        max_accesses: int | None = 200_000, max_test: int = 50_000, k: int = 5, depth: int = 2,
        epochs: int = 8, plots: bool = True) -> Evaluation:
    traces = {}
    for path in paths:
        ids, spans = read_requests(path, fmt, column=column, limit=max_accesses)
        traces[path.name] = evaluate_trace(ids, k=k, depth=depth, max_test=max_test,
                                           epochs=epochs, seed=seed, spans=spans)
    methods = list(next(iter(traces.values()))["results"])
    results = {}
    for m in methods:
        keys = traces[next(iter(traces))]["results"][m].keys()
        results[m] = {key: float(np.mean([t["results"][m][key] for t in traces.values()]))
                      for key in keys}
    headline = "hit_ratio_cache_1%"
    ev = Evaluation(
        learner="prefetch", title=f"prefetch: {', '.join(traces)}",
        data=[str(p) for p in paths], metric=headline, higher_is_better=True,
        naive_baseline=NONE,
        protocol=(f"format `{fmt}`; first 70% of each trace (at most {max_accesses} accesses "
                  f"read) trains, up to {max_test} following accesses test; online tables learn "
                  f"test-then-train; top {k} proposals, {depth} prefetched per access; "
                  "next-n-sequential proposes the next requests of the same size back to back "
                  f"(requests of oracleGeneral traces span size/512 sectors); figures averaged "
                  f"over {len(traces)} trace(s)."),
        results=results,
        details={"traces": {name: {key: v for key, v in t.items() if key != "rolling_hit"}
                            for name, t in traces.items()},
                 "summary_columns": [headline, "hit_ratio_cache_10%", f"hit_at_{k}",
                                     f"precision_at_{k}", "prefetch_coverage",
                                     "useless_prefetch_share"]})
    for name, t in traces.items():
        ev.notes.append(f"`{name}`: {t['accesses']:,} accesses, {t['distinct']:,} distinct; "
                        f"1% cache = {t['cache_blocks']['1%']:,} blocks; hit ratio at 1%: "
                        + ", ".join(f"{m} {r['hit_ratio_cache_1%']:.3f}"
                                    for m, r in t["results"].items()))
    if plots:
        ev.plots = _plots(traces, out, k)
    return ev


def _plots(traces: dict[str, dict], out: Path, k: int) -> list[tuple[str, str]]:
    n = len(traces)
    fig, axes = figure(4.2 * n, 3.8, ncols=n)
    for ax, (name, t) in zip(axes, traces.items()):
        shares = [s * 100 for s in CACHE_SHARES]
        for method, r in t["results"].items():
            ax.plot(shares, [r[f"hit_ratio_cache_{s:g}%"] for s in shares], "o-",
                    lw=2.5 if method == OURS else 1.2, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("cache size, % of distinct blocks")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("hit ratio")
    axes[0].legend(fontsize=7)
    save(fig, out / "prefetch_hit_ratio.png")
    fig, axes = figure(4.2 * n, 3.5, ncols=n)
    for ax, (name, t) in zip(axes, traces.items()):
        for method, curve in t["rolling_hit"].items():
            ax.plot(np.linspace(0, 1, len(curve)), curve, lw=2 if method == OURS else 1,
                    label=method)
        ax.set_xlabel("position in the test span")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel(f"hit@{k}, rolling")
    axes[0].legend(fontsize=7)
    save(fig, out / "prefetch_learning.png")
    return [("Hit ratio vs cache size", "prefetch_hit_ratio.png"),
            (f"Prequential hit@{k} over the test span", "prefetch_learning.png")]
