"""Prefetching on real access traces: the daemon's prefetch learner against LRU alone, next-N
sequential (by the request's own size, where the trace records it), a Markov successor table and
a stride detector.

Each trace is one object read by one node; an access's address is its ``chunk_index`` and its
span its ``chunk_count``, as ``pakit-stream replay --kind trace`` publishes them. The trace is
split in time: the first 70% trains, the accesses after it test (at most ``max_test``).

Ours is the :class:`~pakit_stream.learners.prefetch.Prefetcher` the daemon serves. Its step net
is trained on the training part and put through the daemon's gate
(:func:`~pakit_stream.learners.prefetch.judge_net`: the learner with the net against the learner
without it, on the newest tenth of the training part): it serves only if it wins there. The
learner is then warmed on the training part and, like the online baselines, learns the test part
test-then-train: each proposal is made before its outcome is seen. It is asked, as a node
that names its cache size is, with the size of each simulated cache, so that its floor is the
learned cost of a prefetch to that cache; the notes give the hit ratio with the fixed floor
instead. After every access a method
proposes its top ``k`` next blocks; ``depth`` of them are prefetched into an LRU cache of 1–10%
of the trace's distinct blocks. Every method gets the same slots and the same information
(address and span).

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
from pakit_stream.exceptions import DataError
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


def _precision_hit(test: list[str], props: list[list[str]], k: int) -> tuple[float, float]:
    n = len(test) - 1
    hit = sum(test[i + 1] in props[i][:k] for i in range(n)) / n
    prec = sum(len(set(props[i][:k]) & set(test[i + 1:i + 1 + k])) for i in range(n)) / (n * k)
    return hit, prec


def _stride(test: list[int], before: int | None, k: int) -> list[list[str]]:
    """A stride detector (a reference prediction table of one stream): once the same step
    has been seen twice in a row, propose the next ``k`` addresses at that step."""
    out, last, step = [], before, None
    for b in test:
        d = None if last is None else b - last
        out.append([str(b + j * d) for j in range(1, k + 1)] if d and d == step else [])
        if d:
            step = d
        last = b
    return out


def evaluate_trace(ids: np.ndarray, *, k: int = 5, depth: int = 2, max_test: int = 50_000,
                   epochs: int = 8, train_share: float = 0.7, seed: int = 0,
                   spans: np.ndarray | None = None, min_confidence: float = 0.1,
                   horizon: int = 16, max_vocab: int = 512) -> dict[str, Any]:
    from pakit_stream.batch.prefetch import PrefetchEngine
    from pakit_stream.learners.prefetch import Prefetcher, delta_sequences, judge_net
    from pakit_stream.serving.prefetch import ServedPrefetchModel
    from pakit_stream.training import TrainingConfig

    addresses = [int(b) for b in ids]
    counts = [1] * len(addresses) if spans is None else [int(x) for x in spans]
    seq = [str(b) for b in addresses]
    cut = int(len(seq) * train_share)
    train, test = seq[:cut], seq[cut:cut + max_test]
    if len(train) < 10 or len(test) < 10:
        raise DataError(f"trace too short to split ({len(seq)} accesses)")
    obj = "trace"  # one object: the volume the trace addresses
    reads = [("node", seq[i], obj, addresses[i], counts[i]) for i in range(len(seq))]
    train_reads, test_reads = reads[:cut], reads[cut:cut + max_test]

    # the step net, trained and gated as the daemon's retrainer does it
    params = {"min_confidence": min_confidence, "horizon": horizon,
              "successor_capacity": 1_000_000}
    gate_cut = int(len(train_reads) * 0.9)
    engine = PrefetchEngine(max_vocab_size=max_vocab)
    net, gate = None, {}
    steps = delta_sequences((r[0], r[2], r[3]) for r in train_reads[:gate_cut])
    if sum(len(s) for s in steps) > 10:
        engine.train(steps, TrainingConfig(num_epochs=epochs, batch_size=256,
                                           learning_rate=3e-3, early_stopping_patience=2,
                                           seed=seed))
        with tempfile.TemporaryDirectory() as tmp:
            engine.save(Path(tmp) / "prefetch.safetensors")
            candidate = ServedPrefetchModel(Path(tmp) / "prefetch.safetensors")
        window, holdout = train_reads[:gate_cut], train_reads[gate_cut:]
        gate = {"with_net": judge_net(candidate, window, holdout, k, **params),
                "without_net": judge_net(None, window, holdout, k, **params)}
        if gate["with_net"] > gate["without_net"]:
            net = candidate
    gate["net_served"] = net is not None

    ours = Prefetcher(**params)
    ours.net = net
    for r in train_reads:
        ours.observe(*r)

    distinct = len(set(seq))
    caps = {s: max(1, int(distinct * s)) for s in CACHE_SHARES}
    thresholds = {cap: [] for cap in caps.values()}

    def served(r) -> dict[int, list[str]]:
        """Exactly the daemon's hint to a node that names its cache size, as the cache's keys,
        for each cache size; ``None``: to a node that gives none (the fixed floor)."""
        ours.observe(*r)
        out = {None: [p.block_hash or str(p.chunk_index) for p in ours.propose("node", k)]}
        for cap in caps.values():
            thresholds[cap].append(ours.threshold("node", cap))
            out[cap] = [p.block_hash or str(p.chunk_index) for p in ours.propose("node", k, cap)]
        return out

    markov = SuccessorTable(capacity=1_000_000)
    markov.learn_sequence(train, node_id="eval")

    def successor(b: str) -> list[str]:
        markov.observe("eval", b)
        return markov.successors(b, k)

    test_spans = counts[cut:cut + max_test]
    hints = [served(r) for r in test_reads]
    ours_at = {cap: [h[cap] for h in hints] for cap in (None, *caps.values())}
    props = {
        NONE: None,
        "next-n-sequential": [[str(int(b) + j * span) for j in range(1, k + 1)]
                              for b, span in zip(test, test_spans)],
        "markov-successor": [successor(b) for b in test],
        "stride": _stride(addresses[cut:cut + max_test], addresses[cut - 1], k),
        OURS: ours_at[caps[CACHE_SHARES[0]]],
    }
    results: dict[str, dict[str, Any]] = {}
    baseline_misses = {}
    for method, p in props.items():
        row: dict[str, Any] = {}
        for share, cap in caps.items():
            sim = simulate_cache(test, ours_at[cap] if method == OURS else p, cap, depth)
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
    # the same learner with the fixed floor instead of the learned one: what learning it buys
    fixed_floor = {f"{s * 100:g}%": simulate_cache(test, ours_at[None], cap, depth)["hit_ratio"]
                   for s, cap in caps.items()}
    rolling = {}
    for method in ("markov-successor", OURS):
        hits = np.array([test[i + 1] in props[method][i] for i in range(len(test) - 1)], float)
        w = max(1, len(hits) // 50)
        rolling[method] = np.convolve(hits, np.ones(w) / w, mode="valid")[::w].tolist()
    return {"accesses": len(seq), "distinct": distinct, "train_accesses": len(train),
            "test_accesses": len(test), "cache_blocks": {f"{s * 100:g}%": c for s, c in caps.items()},
            "results": results, "rolling_hit": rolling, "net_gate": gate,
            "fixed_floor_hit_ratio": fixed_floor,
            "threshold_median": {f"{s * 100:g}%": float(np.median(thresholds[c]))
                                 for s, c in caps.items()},
            "proposals": ours.calibration()}


def run(paths: list[Path], out: Path, *, fmt: str, column: str = "lbn", seed: int = 0,
        max_accesses: int | None = 200_000, max_test: int = 50_000, k: int = 5, depth: int = 2,
        epochs: int = 8, plots: bool = True, min_confidence: float = 0.1) -> Evaluation:
    traces = {}
    for path in paths:
        ids, spans = read_requests(path, fmt, column=column, limit=max_accesses)
        traces[path.name] = evaluate_trace(ids, k=k, depth=depth, max_test=max_test,
                                           epochs=epochs, seed=seed, spans=spans,
                                           min_confidence=min_confidence)
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
                  f"(requests of oracleGeneral traces span size/512 sectors); stride prefetches "
                  "at a step seen twice in a row; ours is the daemon's prefetch learner, its "
                  "step net served only if it wins the daemon's gate on the newest tenth of the "
                  "training part, asked with each cache size so that its prefetch floor is what "
                  f"a prefetch costs that cache (learned online); figures averaged over "
                  f"{len(traces)} trace(s)."),
        results=results,
        details={"traces": {name: {key: v for key, v in t.items() if key != "rolling_hit"}
                            for name, t in traces.items()},
                 "goal_gain_over_markov": 1.2,
                 "summary_columns": [headline, "hit_ratio_cache_10%", f"hit_at_{k}",
                                     f"precision_at_{k}", "prefetch_coverage",
                                     "useless_prefetch_share"]})
    for name, t in traces.items():
        r = {m: row["hit_ratio_cache_1%"] for m, row in t["results"].items()}
        ev.notes.append(f"`{name}`: {t['accesses']:,} accesses, {t['distinct']:,} distinct; "
                        f"1% cache = {t['cache_blocks']['1%']:,} blocks; hit ratio at 1%: "
                        + ", ".join(f"{m} {v:.3f}" for m, v in r.items())
                        + f"; step net served: {t['net_gate']['net_served']}; learned "
                        f"prefetch floor at 1% (median) {t['threshold_median']['1%']:.4f}, hit "
                        f"ratio with the fixed floor {min_confidence} instead "
                        f"{t['fixed_floor_hit_ratio']['1%']:.3f}")
        ev.notes.append(gain_note(name, r))
    if plots:
        ev.plots = _plots(traces, out, k)
    return ev


def gain_note(name: str, hit: dict[str, float], goal: float = 1.2) -> str:
    """Ours' gain over LRU as a multiple of Markov's, against the goal and against the most
    any method could reach (every access a hit)."""
    lru, markov, ours = hit[NONE], hit["markov-successor"], hit[OURS]
    gain = markov - lru
    if gain <= 0:
        return f"`{name}`: Markov gains nothing over LRU; the {goal}x goal is void"
    ratio, ceiling = (ours - lru) / gain, (1 - lru) / gain
    verdict = ("met" if ratio >= goal else
               f"impossible here: a hit ratio of 1 would give {ceiling:.2f}x" if ceiling < goal
               else f"not met (a hit ratio of 1 would give {ceiling:.2f}x)")
    return (f"`{name}`: gain over LRU {ratio:.2f}x Markov's (goal {goal}x): {verdict}")


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
