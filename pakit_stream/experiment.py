"""``pakit-stream experiment``: nodes that act on hints against nodes that follow fixed rules,
on the same real workload, in the same run.

An embedded broker and the daemon start (a real ``pakit-stream run`` subprocess), and simulated
nodes replay real workloads:

* **reads** from a block access trace (:mod:`pakit_stream.replay.traces`), through each node's
  LRU cache;
* **fetches** from peers whose latencies come from an RTT matrix (each node sits on one host;
  :class:`~pakit_stream.replay.latency.PeerReplay` decides success and latency);
* **stored blocks** cut from a directory of real files, each really compressed with every codec
  (:mod:`pakit_stream.replay.blocks`);
* **gossip rounds** over the same matrix (:mod:`pakit_stream.replay.gossip`).

Nodes come in pairs that see the same workload: the same trace segment, the same candidates,
jitter and losses of every fetch, the same blocks, the same gossip networks. Within a pair, the
node whose ``node_id`` hashes lower is in the **treatment** group: it asks the daemon through
:class:`~pakit_stream.client.HintClient` (under its deadline and fallback) and acts on the
answers (the peer it fetches from, the blocks it prefetches into its cache, the gossip
setting); it stores each block with the codec of the compiled codec policy it fetches every
``policy_refresh_s`` and applies locally. It pays for choosing: the wait for a peer hint is
part of the fetch's latency, and a stored block is charged the policy's lookup, the probe
where the rule reads it, and the wait for the policy when it was fetched for this block.
The other, the **control**, follows fixed rules: a random candidate, no prefetch, zstd-3
above 100 kB else lz4, push with fanout 6 / TTL 10. Both publish their
telemetry through :class:`~pakit_stream.telemetry.TelemetryCollector`, so the daemon learns
from both.

Outcomes per group (:data:`OUTCOMES`) are exported live on ``/metrics`` (label ``group``), and
written at the end to ``results.json`` (treatment, control, uplift and its 95% interval by
batch means over time blocks), ``timeline.json`` and ``report.md`` (with ``over_time.png`` when
matplotlib is installed).
"""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
import sysconfig
import tempfile
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from pakit_stream.broker import EmbeddedBroker, create_topics
from pakit_stream.client import HintClient
from pakit_stream.demo import DaemonProcess
from pakit_stream.evaluation.intervals import mean_interval
from pakit_stream.exceptions import DataError, UsageError
from pakit_stream.learners.codec import CodecPolicy, heuristic_codec
from pakit_stream.learners.network import FALLBACK_FANOUT, FALLBACK_TTL
from pakit_stream.replay.blocks import chunk_tree
from pakit_stream.replay.gossip import LOSSES, SIZES, broadcast, round_event
from pakit_stream.replay.latency import PeerReplay, RttMatrix
from pakit_stream.replay.traces import read_requests, trace_block_hash, trace_object_id
from pakit_stream.settings import Settings
from pakit_stream.simulate import block_events
from pakit_stream.telemetry import TelemetryCollector

__all__ = ["OUTCOMES", "Workload", "load_workload", "Experiment", "run_experiment",
           "summarise", "GROUPS"]

GROUPS = ("treatment", "control")
#: outcome -> whether higher is better
OUTCOMES = {
    "fetch_latency_ms_mean": False,
    "fetch_latency_ms_p95": False,
    "fetch_success": True,
    "cache_hit_ratio": True,
    "storage_cost": False,
    "gossip_messages_per_node": False,
    "gossip_digests_per_node": False,
    "gossip_coverage": True,
}
#: the per-event samples each outcome is computed from, and how
_SAMPLES = {"fetch_latency_ms_mean": ("fetch_ms", statistics.fmean),
            "fetch_latency_ms_p95": ("fetch_ms", lambda v: float(np.percentile(v, 95))),
            "fetch_success": ("fetch_ok", statistics.fmean),
            "cache_hit_ratio": ("cache_hit", statistics.fmean),
            "storage_cost": ("storage_cost", statistics.fmean),
            "gossip_messages_per_node": ("gossip_messages", statistics.fmean),
            "gossip_digests_per_node": ("gossip_digests", statistics.fmean),
            "gossip_coverage": ("gossip_coverage", statistics.fmean)}
_SHARED = "shared/data"


def shared_data() -> Path | None:
    """``../shared/data`` next to the working directory or to this checkout, if present."""
    for base in (Path.cwd().parent, Path(__file__).resolve().parents[2]):
        if (base / _SHARED).is_dir():
            return base / _SHARED
    return None


# -- the workload ----------------------------------------------------------------------------
@dataclass
class Block:
    """A stored block as both groups see it: its events and what each codec cost on it."""

    stored: dict
    fingerprint: dict
    costs: dict[str, tuple[int, float]]  # codec -> (bytes, compress + decompress µs)


@dataclass
class Workload:
    ids: np.ndarray  # the trace's block ids, in access order
    spans: np.ndarray
    matrix: RttMatrix
    blocks: list[Block]
    sources: dict[str, str] = field(default_factory=dict)  # what each part was read from

    @cached_property
    def object_id(self) -> str:
        return trace_object_id(self.sources["trace"])


def _local_trace(n: int, seed: int, block_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Without a trace: files of this machine (Python's standard library) read front to back,
    file popularity Zipf-distributed, as block ids of one address space."""
    files = sorted(p for p in Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:2000]
    sizes = np.array([max(1, -(-p.stat().st_size // block_size)) for p in files])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(files) + 1)
    order = rng.permutation(len(files))
    ids: list[int] = []
    while len(ids) < n:
        f = order[rng.choice(len(files), p=weights / weights.sum())]
        ids.extend(range(int(starts[f]), int(starts[f] + sizes[f])))
    ids_a = np.array(ids[:n], dtype=np.int64)
    return ids_a, np.ones_like(ids_a)


def _local_matrix(hosts: int, slices: int, seed: int) -> RttMatrix:
    """Without an RTT set: hosts on a plane, RTT growing with distance, drifting per slice."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (hosts, 2))
    base = 5 + 200 * np.linalg.norm(xy[:, None] - xy[None], axis=2)
    drift = np.exp(np.cumsum(rng.normal(0, 0.05, (slices, hosts, 1)), axis=0))
    return RttMatrix(base[None] * drift * drift.transpose(0, 2, 1), unit="ms")


def load_workload(trace: Path | None = None, fmt: str | None = None, rtt: Path | None = None,
                  unit: str | None = None, files: Path | None = None, *, column: str = "lbn",
                  max_accesses: int = 200_000, max_slices: int | None = None,
                  max_blocks: int = 600, avg_size: int = 16384, seed: int = 0,
                  use_shared: bool = True) -> Workload:
    """The data of a run; each part defaults to ``../shared/data`` when present (and
    ``use_shared``), else to files of this machine (a synthetic trace and matrix, said so in
    ``sources``)."""
    shared = shared_data() if use_shared else None
    sources: dict[str, str] = {}
    if trace is None and shared is not None:
        trace, fmt = shared / "traces/cloudphysics_io.oracleGeneral.bin", "oracle-general"
    if trace is not None:
        if not fmt:
            raise UsageError("--trace needs --format")
        ids, spans = read_requests(trace, fmt, column=column, limit=max_accesses)
        sources["trace"] = f"{Path(trace).name} ({fmt})"
    else:
        ids, spans = _local_trace(max_accesses, seed)
        sources["trace"] = "synthetic: this machine's stdlib files read front to back, Zipf"
    if rtt is None and shared is not None:
        rtt, unit = shared / "latency/seattle_rtt_99x99x688.tar.xz", "s"
    if rtt is not None:
        if not unit:
            raise UsageError("--rtt needs --unit s|ms")
        matrix = RttMatrix.load(rtt, unit, max_slices=max_slices)
        sources["rtt"] = f"{Path(rtt).name} ({unit})"
    else:
        matrix = _local_matrix(40, max_slices or 200, seed)
        sources["rtt"] = "synthetic: 40 hosts on a plane, drifting"
    if files is None:
        files = shared / "corpora" if shared is not None else Path(sysconfig.get_paths()["stdlib"])
    blocks = []
    for i, chunk in enumerate(chunk_tree(files, avg_size)):
        if i >= max_blocks:
            break
        stored, fingerprint = block_events(chunk.data, chunk.block_hash, "-", chunk.depth, 0.0)
        costs = {r["algorithm"]: (r["compressed_size"], r["compress_us"] + r["decompress_us"])
                 for r in stored["codec_results"]}
        blocks.append(Block(stored, fingerprint, costs))
    if not blocks:
        raise DataError(f"{files}: no file to cut into blocks")
    sources["files"] = str(files)
    if matrix.hosts < 4:
        raise DataError("the RTT matrix needs at least 4 hosts")
    return Workload(ids, spans, matrix, blocks, sources)


# -- the nodes -------------------------------------------------------------------------------
class _Lru:
    """A node's block cache; it counts what prefetching brought in, and how much of it was
    read before it left (the rest is traffic a prefetch wasted)."""

    def __init__(self, size: int) -> None:
        self.size, self._items = size, OrderedDict()  # block -> brought in by a prefetch
        self.prefetched = self.used = 0

    def read(self, key: int) -> bool:
        hit = key in self._items
        if hit and self._items[key]:
            self.used += 1
        self._put(key, False)
        return hit

    def prefetch(self, key: int) -> None:
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self.prefetched += 1
            self._put(key, True)

    def _put(self, key: int, prefetched: bool) -> None:
        self._items[key] = prefetched
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)


class Node:
    """One simulated node; ``hints`` is ``None`` for the control group."""

    def __init__(self, node_id: str, group: str, host: int, cache_blocks: int,
                 collector: TelemetryCollector, hints: HintClient | None, seed: int) -> None:
        self.node_id, self.group, self.host = node_id, group, host
        self.cache = _Lru(cache_blocks)
        self.cache_blocks = cache_blocks
        self.collector, self.hints = collector, hints
        self.rng = random.Random(seed)  # the control's own choices
        self.hint_ms: list[tuple[str, float, bool]] = []  # (hint, ms, answered by fallback)
        self.policy: CodecPolicy | None = None  # the codec decisions, as last fetched
        self.policy_source, self.policy_due = "fallback", 0.0
        self.recent: float | None = None  # the lz4 ratio of the node's last stored block

    def ask(self, kind: str, **request) -> dict:
        t0 = time.perf_counter()
        answer = getattr(self.hints, kind)(**request)
        self.hint_ms.append((kind, (time.perf_counter() - t0) * 1e3, "error" in answer))
        return answer

    def codec_policy(self, refresh_s: float) -> tuple[CodecPolicy, float]:
        """The compiled codec decisions, fetched again every ``refresh_s`` (after a
        fallback, none learned yet or no answer, within a second); and the ms waited for
        them now (0 while the ones held are fresh)."""
        now, waited = time.monotonic(), 0.0
        if self.policy is None or now >= self.policy_due:
            answer = self.ask("codec_policy")
            waited = self.hint_ms[-1][1]
            self.policy, self.policy_source = CodecPolicy.from_dict(answer), answer["source"]
            self.policy_due = now + (1.0 if answer["source"] == "fallback" else refresh_s)
        return self.policy, waited


class Experiment:
    """Pairs of nodes replaying a :class:`Workload` against a daemon at ``url``."""

    def __init__(self, workload: Workload, url: str | None, bootstrap: str | None,
                 spool_dir: Path, nodes: int = 8, *, cache_blocks: int | None = None,
                 reads_per_tick: int = 2, store_every: int = 4, gossip_every: int = 8,
                 slice_seconds: float = 1.0, hint_timeout: float = 0.05, seed: int = 0,
                 policy_refresh_s: float = 10.0, settings: Settings | None = None) -> None:
        check(nodes)
        self.w, self.seed = workload, seed
        self.settings = settings or Settings()
        self.reads_per_tick, self.store_every = reads_per_tick, store_every
        self.gossip_every, self.slice_seconds = gossip_every, slice_seconds
        self.policy_refresh_s = policy_refresh_s
        pairs = nodes // 2
        rng = np.random.default_rng(seed)
        hosts = rng.permutation(workload.matrix.hosts)[:pairs]
        self.segments = np.array_split(np.arange(len(workload.ids)), pairs)
        self.pairs: list[tuple[Node, Node]] = []
        for j in range(pairs):
            a, b = f"node-{2 * j:03d}", f"node-{2 * j + 1:03d}"
            first, second = sorted((a, b), key=lambda n: zlib.crc32(n.encode()))
            seg = self.segments[j]
            size = cache_blocks or max(16, len(np.unique(workload.ids[seg])) // 100)
            pair = []
            for node_id, group in ((first, "treatment"), (second, "control")):
                collector = TelemetryCollector(spool_dir / f"{node_id}.db", node_id=node_id,
                                               broker=bootstrap, batch_size=500,
                                               flush_interval_s=0.2)
                hints = HintClient(url, timeout=hint_timeout) if group == "treatment" else None
                pair.append(Node(node_id, group, int(hosts[j]), size, collector, hints,
                                 seed * 1000 + 2 * j + len(pair)))
            self.pairs.append((pair[0], pair[1]))
            # the pair's shared luck: candidates, jitter, losses, networks, blocks
        self._pair_rng = [np.random.default_rng([seed, j]) for j in range(pairs)]
        self._peers = [PeerReplay(workload.matrix, node=int(hosts[j]), seed=seed)
                       for j in range(pairs)]
        self.samples = Samples()
        #: gossip rounds by where the setting came from (the treatment's hint source, or
        #: "control"): [rounds, coverage sum, payload per node sum, digests per node sum]
        self.gossip_by_source: dict[str, list] = {}
        #: what the treatment was told, by hint: answer -> count (``source`` included)
        self.answers: dict[str, Counter] = {"network": Counter(), "compression": Counter(),
                                            "peer": Counter(), "prefetch": Counter()}
        self.ticks = 0
        self.started = time.monotonic()

    # -- one tick: every pair does the same work, each node its own way --------------------
    def tick(self) -> None:
        elapsed = time.monotonic() - self.started
        t = min(int(elapsed / self.slice_seconds), self.w.matrix.slices - 1)
        for j, (treated, control) in enumerate(self.pairs):
            seg = self.segments[j]
            for r in range(self.reads_per_tick):
                pos = seg[(self.ticks * self.reads_per_tick + r) % len(seg)]
                block = int(self.w.ids[pos])
                digest = trace_block_hash(block, self.w.sources["trace"])
                for node in (treated, control):
                    self._read(node, block, digest, int(self.w.spans[pos]), elapsed)
            self._fetch(j, t, elapsed)
            if self.ticks % self.store_every == j % self.store_every:
                k = (self.ticks // self.store_every + j * 97) % len(self.w.blocks)
                for node in (treated, control):
                    self._store(node, self.w.blocks[k], elapsed)
            if self.ticks % self.gossip_every == j % self.gossip_every:
                self._gossip(j, t, elapsed)
        self.ticks += 1

    def _sample(self, elapsed: float, node: Node, kind: str, value: float) -> None:
        self.samples.add(elapsed, node.group, kind, value)

    def _read(self, node: Node, block: int, digest: str, span: int, elapsed: float) -> None:
        hit = node.cache.read(block)
        self._sample(elapsed, node, "cache_hit", hit)
        obj = self.w.object_id
        node.collector.record(event_type="block_accessed", node_id=node.node_id, ts=time.time(),
                              block_hash=digest,
                              cache_hit=hit, latency_ms=0.05 if hit else 5.0, object_id=obj,
                              chunk_index=block, chunk_count=span)
        if node.hints is not None:
            answer = node.ask("prefetch", node_id=node.node_id, cache_blocks=node.cache_blocks,
                              object_id=obj, chunk_index=block)
            self.answers["prefetch"][f"{answer['source']} {len(answer.get('proposals', ()))}"] += 1
            for p in answer.get("proposals", ()):
                if p.get("object_id") == obj and p.get("chunk_index") is not None:
                    node.cache.prefetch(int(p["chunk_index"]))

    def _fetch(self, j: int, t: int, elapsed: float) -> None:
        replay = self._peers[j]
        step = replay.step(self.ticks, t, self._pair_rng[j])  # the pair's shared luck
        names = [replay.peer_name(p) for p in step.candidates]
        k = len(names)
        for node in self.pairs[j]:
            waited = 0.0  # the hint is on the fetch's path: its wait is the fetch's
            if node.hints is not None:
                a = node.ask("peer", node_id=node.node_id, available_peers=names)
                waited = node.hint_ms[-1][1]
                chosen = a["peer_id"]
                self.answers["peer"][a["source"]] += 1
                i = names.index(chosen) if chosen in names else node.rng.randrange(k)
            else:
                i = node.rng.randrange(k)
            peer = step.candidates[i]
            ok, ms = step.fetch(peer)
            self._sample(elapsed, node, "fetch_ms", ms + waited)
            self._sample(elapsed, node, "fetch_ok", ok)
            node.collector.record(**{**replay.event(step, peer, ok, ms),
                                     "node_id": node.node_id, "ts": time.time()})

    def _store(self, node: Node, block: Block, elapsed: float) -> None:
        s, size = self.settings, block.stored["block_size"]
        lam, paid_us = s.codec_cpu_bytes_per_us, 0.0
        if node.hints is not None:
            # the compiled decisions, applied locally: a lookup, plus the probe where the
            # rule for this size reads it, plus the wait whenever they are fetched again
            policy, waited_ms = node.codec_policy(self.policy_refresh_s)
            codec, probed = policy.choose(size, node.recent, block.stored["probe_ratio"])
            paid_us = (s.codec_lookup_us + (s.codec_probe_us if probed else 0.0)
                       + waited_ms * 1e3)
            self.answers["compression"][f"{codec} {node.policy_source}"] += 1
        else:
            codec = heuristic_codec(size)
        if "lz4" in block.costs:
            node.recent = block.costs["lz4"][0] / max(size, 1)
        size_c, us = block.costs.get(codec, block.costs["none"])
        self._sample(elapsed, node, "storage_cost", size_c + lam * (us + paid_us))
        node.collector.record(**{**block.stored, "node_id": node.node_id, "ts": time.time(),
                                 "compression_algorithm": codec,
                                 "compression_ratio": max(size_c, 1) / max(size, 1)})
        node.collector.record(**{**block.fingerprint, "node_id": node.node_id,
                                 "ts": time.time()})

    def _gossip(self, j: int, t: int, elapsed: float) -> None:
        rng = self._pair_rng[j]
        n, loss = int(rng.choice(SIZES)), float(rng.choice(LOSSES))
        m = self.w.matrix
        hosts = rng.choice(m.hosts, n, replace=n > m.hosts)
        rtt = m.ms[t]
        sample = rtt[np.ix_(hosts[:64], hosts[:64])]
        latency = float(np.nanmean(sample)) if np.isfinite(sample).any() else 0.0
        seed = int(rng.integers(1 << 31))
        for node in self.pairs[j]:
            mode, fanout, ttl, pull = "push", FALLBACK_FANOUT, FALLBACK_TTL, 0
            source = "control"
            if node.hints is not None:
                a = node.ask("network", network_size=n, avg_latency_ms=round(latency, 3),
                             message_loss_rate=loss, node_id=node.node_id)
                mode, fanout, ttl, pull = a["mode"], a["fanout"], a["ttl"], a["pull_rounds"]
                source = a["source"]
                self.answers["network"][f"{mode} {fanout}/{ttl}/{pull} {source}"] += 1
            spread = broadcast(n, fanout, ttl, loss, np.random.default_rng(seed), rtt, hosts,
                               mode=mode, pull=pull)
            self._sample(elapsed, node, "gossip_messages", spread.payload / n)
            self._sample(elapsed, node, "gossip_digests", spread.control / n)
            self._sample(elapsed, node, "gossip_coverage", spread.coverage)
            by = self.gossip_by_source.setdefault(source, [0, 0.0, 0.0, 0.0])
            by[0] += 1
            by[1] += spread.coverage
            by[2] += spread.payload / n
            by[3] += spread.control / n
            node.collector.record(**round_event(node.node_id, time.time(), n, latency, loss,
                                                fanout, ttl, spread, mode, pull))

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return [n for pair in self.pairs for n in pair]

    def hint_samples(self) -> list[tuple[str, float, bool]]:
        return [h for n in self.nodes for h in n.hint_ms]

    def flush(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while (node.collector.flush() or node.collector.pending()) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.collector.close()
            if node.hints is not None:
                node.hints.close()


# -- the figures -----------------------------------------------------------------------------
class Samples:
    """Per-event outcome samples by (group, kind), in time order."""

    def __init__(self) -> None:
        self._at: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def add(self, elapsed: float, group: str, kind: str, value: float) -> None:
        times, values = self._at.setdefault((group, kind), ([], []))
        times.append(elapsed)
        values.append(float(value))

    def get(self, kind: str, group: str, lo: float = -math.inf, hi: float = math.inf
            ) -> list[float]:
        """The values of ``kind`` in ``group`` sampled in ``[lo, hi)`` seconds."""
        times, values = self._at.get((group, kind), ((), ()))
        return values[bisect.bisect_left(times, lo):bisect.bisect_left(times, hi)]

    def end(self) -> float:
        return max((t[-1] for t, _ in self._at.values() if t), default=0.0)


def _value(name: str, values: Sequence[float]) -> float | None:
    return _SAMPLES[name][1](values) if len(values) else None


def summarise(samples: Samples, hints: list[tuple[str, float, bool]],
              seconds: float, blocks: int = 5, bins: int = 20) -> dict[str, Any]:
    """``results.json``: per outcome, treatment, control, uplift and its 95% interval by batch
    means (the run cut into ``blocks`` equal time blocks: the interval is the uplift ± t times
    the standard error of the blocks' uplifts); and per outcome, the values of each group in
    ``bins`` time bins (the timeline), and when the treatment overtook the control for good."""
    if blocks < 3:
        raise UsageError("at least 3 time blocks")
    end = max(seconds, samples.end()) + 1e-9
    outcomes, timeline = {}, {"bin_seconds": end / bins, "outcomes": {}}
    for name, higher in OUTCOMES.items():
        kind = _SAMPLES[name][0]
        x = _value(name, samples.get(kind, "treatment"))
        y = _value(name, samples.get(kind, "control"))
        entry: dict[str, Any] = {"treatment": x, "control": y, "higher_is_better": higher,
                                 "uplift": None, "ci95": None, "samples": {
                                     g: len(samples.get(kind, g)) for g in GROUPS}}
        if x is not None and y is not None:
            entry["uplift"] = x - y
            ups = []
            for b in range(blocks):
                lo, hi = end * b / blocks, end * (b + 1) / blocks
                bx = _value(name, samples.get(kind, "treatment", lo, hi))
                by = _value(name, samples.get(kind, "control", lo, hi))
                if bx is not None and by is not None:
                    ups.append(bx - by)
            if len(ups) >= 2:
                lo95, hi95 = mean_interval(ups)
                half = (hi95 - lo95) / 2
                entry["ci95"] = [x - y - half, x - y + half]
                entry["block_uplifts"] = ups
        outcomes[name] = entry
        series = {g: [_value(name, samples.get(kind, g, end * i / bins, end * (i + 1) / bins))
                      for i in range(bins)] for g in GROUPS}
        timeline["outcomes"][name] = series
        entry["overtakes_at_s"] = _overtake(series, higher, end / bins)
    miss = [fallback for _, _, fallback in hints]
    lat = np.array([ms for _, ms, _ in hints]) if hints else np.zeros(1)
    return {"outcomes": outcomes,
            "hint_deadline_miss_share": (sum(miss) / len(miss)) if miss else None,
            "hints": {"requests": len(hints), "ms_p50": float(np.percentile(lat, 50)),
                      "ms_p95": float(np.percentile(lat, 95)),
                      "ms_p99": float(np.percentile(lat, 99)),
                      "by_hint": {h: len([1 for k, _, _ in hints if k == h])
                                  for h in sorted({k for k, _, _ in hints})}},
            "timeline": timeline}


def _overtake(series: dict[str, list], higher: bool, width: float) -> float | None:
    """The start of the first time bin from which the treatment is ahead on the mean of every
    later stretch of bins (each suffix), or ``None``."""
    ups = [(i, (x - y) * (1 if higher else -1)) for i, (x, y) in
           enumerate(zip(series["treatment"], series["control"])) if x is not None and y is not None]
    start = None
    for j in range(len(ups) - 1, -1, -1):  # j indexes the bins both groups have values in
        if statistics.fmean(u for _, u in ups[j:]) > 0:
            start = ups[j][0]
        else:
            break
    return None if start is None else round(start * width, 1)


def _favours(entry: dict) -> str:
    if entry.get("ci95") is None:
        return "n/a"
    lo, hi = entry["ci95"]
    good = (lambda v: v > 0) if entry["higher_is_better"] else (lambda v: v < 0)
    if good(lo) and good(hi):
        return "treatment"
    if not good(lo) and not good(hi) and lo != 0 and hi != 0:
        return "control"
    return "neither (interval spans 0)"


def write_report(results: dict, out: Path) -> None:
    """``report.md`` (and ``over_time.png`` when matplotlib is there) beside ``results.json``."""
    lines = ["# pakit-stream experiment", "",
             f"{results['nodes']} nodes ({results['nodes'] // 2} pairs), "
             f"{results['seconds']:.0f} s, seed {results['seed']}.", ""]
    lines += [f"- {k}: {v}" for k, v in results["data"].items()]
    lines += ["", "| outcome | treatment | control | uplift | 95% interval | favours | "
              "treatment ahead for good from |", "|---|---|---|---|---|---|---|"]
    for name, e in results["outcomes"].items():
        def f(v):
            return "n/a" if v is None else f"{v:.4g}"
        ci = "n/a" if e["ci95"] is None else f"[{e['ci95'][0]:.4g}, {e['ci95'][1]:.4g}]"
        when = "never" if e["overtakes_at_s"] is None else f"{e['overtakes_at_s']} s"
        lines.append(f"| {name} ({'higher' if e['higher_is_better'] else 'lower'} is better) | "
                     f"{f(e['treatment'])} | {f(e['control'])} | {f(e['uplift'])} | {ci} | "
                     f"{_favours(e)} | {when} |")
    h = results["hints"]
    miss = results["hint_deadline_miss_share"]
    lines += ["", f"Hints as the treatment nodes saw them: {h['requests']} requests, p50 "
              f"{h['ms_p50']:.2f} ms, p95 {h['ms_p95']:.2f} ms, p99 {h['ms_p99']:.2f} ms; "
              f"answered by the fallback (deadline missed or daemon unreachable): "
              f"{'n/a' if miss is None else f'{miss:.2%}'} "
              f"(deadline {results['hint_timeout_ms']:.0f} ms)."]
    pf = results.get("prefetch") or {}
    if pf.get("fetched_per_read") is not None:
        used = "n/a" if pf["used_share"] is None else f"{pf['used_share']:.1%}"
        lines += ["", f"Prefetching's traffic: the treatment fetched {pf['fetched_per_read']:.3f} "
                  f"blocks ahead per read, of which {used} were read before they left the "
                  f"cache (the control fetches nothing ahead)."]
    if _plot(results, out / "over_time.png"):
        lines += ["", "![each outcome over time, per group](over_time.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 4, figsize=(14, 6))
    axes = list(grid.flat)
    tl = results["timeline"]
    width = tl["bin_seconds"]
    for ax, (name, series) in zip(axes, tl["outcomes"].items()):
        for group in GROUPS:
            xs = [(i + 0.5) * width for i, v in enumerate(series[group]) if v is not None]
            ys = [v for v in series[group] if v is not None]
            ax.plot(xs, ys, marker=".", label=group)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -- live metrics ----------------------------------------------------------------------------
class LiveMetrics:
    """The outcomes per group on a ``/metrics`` endpoint of this process, for Prometheus."""

    def __init__(self, port: int | None) -> None:
        self.registry = CollectorRegistry()
        self.outcome = Gauge("pakit_stream_experiment_outcome", "Each outcome of the experiment "
                             "so far, per group", ["outcome", "group"], registry=self.registry)
        self.hint = Histogram("pakit_stream_experiment_hint_seconds", "Hint latency as the "
                              "treatment nodes saw it", ["hint"], registry=self.registry,
                              buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5))
        self.fallbacks = Gauge("pakit_stream_experiment_hint_fallback_share", "Share of hints "
                               "answered by the fallback", registry=self.registry)
        self.port = None
        if port is not None:
            server, _ = start_http_server(port, addr="127.0.0.1", registry=self.registry)
            self.port = server.server_port

    def update(self, exp: Experiment, hints_seen: int) -> int:
        for name in OUTCOMES:
            kind = _SAMPLES[name][0]
            for group in GROUPS:
                v = _value(name, exp.samples.get(kind, group))
                if v is not None:
                    self.outcome.labels(outcome=name, group=group).set(v)
        hints = exp.hint_samples()
        for kind, ms, _ in hints[hints_seen:]:
            self.hint.labels(hint=kind).observe(ms / 1e3)
        if hints:
            self.fallbacks.set(sum(f for _, _, f in hints) / len(hints))
        return len(hints)


# -- the command -----------------------------------------------------------------------------
def check(nodes: int, blocks: int = 3) -> None:
    """Refuse a run that cannot be made, before anything starts."""
    if nodes < 2 or nodes % 2:
        raise UsageError("--nodes must be an even number, at least 2")
    if blocks < 3:
        raise UsageError("--blocks must be at least 3")


def run_experiment(workload: Workload, seconds: float = 300.0, nodes: int = 8,
                   out: Path | None = None, data_dir: Path | None = None,
                   metrics_port: int | None = None, hint_timeout: float = 0.05,
                   cache_blocks: int | None = None, blocks: int = 5, seed: int = 0,
                   slice_seconds: float = 1.0, quiet: bool = False) -> dict:
    """Broker, daemon and ``nodes`` nodes for ``seconds``; returns (and writes into ``out``)
    the results."""
    check(nodes, blocks)
    out = Path(out or tempfile.mkdtemp(prefix="pakit-stream-experiment-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="pakit-stream-experiment-data-"))

    def say(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    say(f"pakit-stream experiment: {nodes} nodes for {seconds:.0f} s; results in {out}")
    for k, v in workload.sources.items():
        say(f"  {k}: {v}")
    live = LiveMetrics(metrics_port)
    if live.port:
        say(f"  live outcomes: http://127.0.0.1:{live.port}/metrics")
    with EmbeddedBroker(log_path=data_dir / "broker.log") as broker:
        create_topics(broker.bootstrap, 4)
        daemon = DaemonProcess(broker.bootstrap, data_dir / "daemon")
        exp = None
        try:
            daemon.start()
            say(f"  broker {broker.bootstrap}, daemon {daemon.url}")
            exp = Experiment(workload, daemon.url, broker.bootstrap, data_dir, nodes,
                             cache_blocks=cache_blocks, hint_timeout=hint_timeout, seed=seed,
                             slice_seconds=slice_seconds)
            last, seen = 0.0, 0
            try:
                while (elapsed := time.monotonic() - exp.started) < seconds:
                    exp.tick()
                    if elapsed - last >= max(1.0, seconds / 20):
                        last = elapsed
                        seen = live.update(exp, seen)
                        say(_progress(exp, elapsed))
            except KeyboardInterrupt:  # stopped early: the figures so far
                say("  interrupted: writing the results so far")
                seconds = time.monotonic() - exp.started
            live.update(exp, seen)
            exp.flush()
        finally:
            if exp is not None:
                exp.close()
            daemon.stop()
    results = {**summarise(exp.samples, exp.hint_samples(), seconds, blocks), "seconds": seconds,
               "nodes": nodes, "seed": seed, "ticks": exp.ticks, "data": workload.sources,
               "hint_timeout_ms": hint_timeout * 1e3,
               "answers": {k: dict(v.most_common(12)) for k, v in exp.answers.items()},
               "prefetch": _prefetch_traffic(exp),
               "gossip_by_source": {src: {"rounds": n, "coverage": c / n, "payload_per_node":
                                          p / n, "digests_per_node": d / n}
                                    for src, (n, c, p, d) in exp.gossip_by_source.items()},
               "groups": {n.node_id: n.group for n in exp.nodes}, "metrics_port": live.port}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "timeline.json").write_text(json.dumps(results["timeline"], indent=1))
    write_report(results, out)
    say((out / "report.md").read_text())
    return results


def _prefetch_traffic(exp: Experiment) -> dict[str, float | None]:
    """What the treatment's prefetching cost: blocks fetched ahead per read, and the share of
    them read before they left the cache (the control prefetches nothing)."""
    caches = [n.cache for n in exp.nodes if n.hints is not None]
    fetched, used = sum(c.prefetched for c in caches), sum(c.used for c in caches)
    reads = len(exp.samples.get("cache_hit", "treatment"))
    return {"fetched_per_read": fetched / reads if reads else None,
            "used_share": used / fetched if fetched else None}


def _progress(exp: Experiment, elapsed: float) -> str:
    parts = []
    for name in ("fetch_latency_ms_mean", "cache_hit_ratio", "storage_cost",
                 "gossip_messages_per_node"):
        kind = _SAMPLES[name][0]
        lo = max(0.0, elapsed - 10.0)  # the last ten seconds
        x = _value(name, exp.samples.get(kind, "treatment", lo))
        y = _value(name, exp.samples.get(kind, "control", lo))
        if x is not None and y is not None:
            parts.append(f"{name.split('_ms')[0]} {x:.3g}/{y:.3g}")
    return f"  [{elapsed:6.1f}s] treatment/control, last 10 s: " + "  ".join(parts)
