"""What to prefetch: sequential runs, stream strides, block successors and a step net, ranked by
how often each kind of proposal has come true.

Four kinds of evidence, each learned per access:

``next``
    per (node, object) stream, whether a read starts where a recent one ended (a sequential run,
    even with other reads in between, as AMP detects them): it proposes the next reads of the
    same size. It needs the optional ``object_id`` and ``chunk_index`` of ``block_accessed``
    (and uses ``chunk_count``).
``stride``
    per (node, object) stream, the most frequent step among the last ``window`` steps of
    ``chunk_index`` (the majority trend of Leap, ATC '20, of which "next block" is the case
    step = 1): it proposes ``index + j * step`` for ``j = 1..k``; it needs positions too.
``successor``
    the online first-order successor table over block hashes
    (:class:`~pakit_stream.learners.successors.SuccessorTable`): what followed this block before.
``net``
    the batch model, when one serves: a GRU over the last steps of the stream that names the
    next **step** (Hashemi et al., ICML 2018), so that it generalises to blocks it never saw.

Every proposal falls in a bucket (its source, its rank, and how strong its own evidence is: the
run's length, the stride's support in the window, the successor's share and count, the net's
probability). A proposal two sources name falls in both. Each
bucket keeps a decayed count of how many of its proposals the node read within ``horizon``
accesses: that share is the proposal's confidence, calibrated online on the nodes' own reads
(proposals are scored after a pseudo-random one in ``score_every`` reads, for the
``max_scored_nodes`` most recently active nodes; the buckets are shared by all; the proposals
after the other reads are made only when the node asks). The ``k`` slots go to the most confident proposals; proposals below a threshold are
dropped, so on a stream where nothing comes true nothing is prefetched (and the cache behaves as
LRU without prefetching).

The threshold is what a prefetch costs. A node that says how many blocks its cache holds
(``cache_blocks``) gets the threshold learned online from its own reads: the chance that the
block a prefetch evicts from its LRU cache would have been read before leaving anyway, estimated
from a sampled stack-distance profile (:class:`~pakit_stream.learners.reuse.ReuseProfile`). A
node that does not say, or whose profile is still thin, gets ``min_confidence``.

One class answers the daemon's hint, the retrain gates and ``pakit-stream evaluate``: the gates
(:func:`judge_net`) build it as the daemon does and warm it on the daemon's window, so what is
judged is the served learner, bar the calibration history the daemon has beyond that window.

>>> p = Prefetcher(min_confidence=0.3)
>>> for i in range(40):
...     p.observe("node-1", f"{i:064x}", "f" * 64, 10 + 2 * i)
>>> [(x.chunk_index, x.source) for x in p.propose("node-1", k=2)]
[(90, 'stride'), (92, 'stride')]
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pakit_stream.base_model import ModelConfig, OnlineModel
from pakit_stream.learners.reuse import ReuseProfile
from pakit_stream.learners.successors import SuccessorTable

__all__ = ["Prefetcher", "Proposal", "delta_sequences", "judge_net", "SOURCES", "GATE_WARM_READS"]

SOURCES = ("next", "stride", "successor", "net")


def _count(item: tuple[int, int]) -> int:
    return item[1]


@dataclass(slots=True)
class Proposal:
    """One block to prefetch: its hash when known, its position when known, and why."""

    block_hash: str | None
    object_id: str | None
    chunk_index: int | None
    confidence: float
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"block_hash": self.block_hash, "object_id": self.object_id,
                "chunk_index": self.chunk_index, "confidence": round(self.confidence, 4),
                "source": self.source}


class _Stream:
    __slots__ = ("last", "count", "run", "steps", "ends")

    def __init__(self, size: int) -> None:
        self.last: int | None = None
        self.count = self.run = 1
        self.steps: deque[int] = deque(maxlen=size)
        self.ends: OrderedDict[int, int] = OrderedDict()  # where recent reads end -> run length


class _Outcomes:
    """A node's open proposals: which were read within the horizon.

    A proposal opened after one read is a *group*: the list of the buckets it falls in. A
    group read in time is emptied, so that its expiry finds nothing left to count as a miss.
    """

    __slots__ = ("clock", "open", "queue")

    def __init__(self) -> None:
        self.clock = 0
        self.open: dict[Any, list[list[tuple]]] = {}  # key -> its groups not yet read, oldest first
        self.queue: deque[tuple[int, Any, list[tuple]]] = deque()  # (expires, key, group)

    def __setstate__(self, state) -> None:
        """Checkpoints from before the groups: one (id, bucket) entry per bucket, ids of
        proposals read kept apart. Each unread entry becomes a group of one, in the same order."""
        slots = state[1] if isinstance(state, tuple) else state
        self.clock = slots["clock"]
        if "ids" not in slots:
            self.open, self.queue = slots["open"], slots["queue"]
            return
        groups = {pid: [bucket] for waiting in slots["open"].values() for pid, bucket in waiting}
        self.open = {key: [groups[pid] for pid, _ in waiting]
                     for key, waiting in slots["open"].items()}
        self.queue = deque((expires, key, groups.get(pid, []))
                           for expires, pid, key in slots["queue"])


def delta_sequences(records: Iterable[tuple[str, str | None, int | None]]) -> list[list[str]]:
    """The step sequences of each (node, object) stream of ``(node, object, index)`` reads, as
    the tokens the delta net learns (repeated reads of one chunk are not steps).

    >>> delta_sequences([("n", "o", 4), ("n", "o", 5), ("n", "p", 0), ("n", "o", 7)])
    [['1', '2'], []]
    """
    streams: dict[tuple[str, str], list] = {}
    for node, obj, index in records:
        if obj is None or index is None:
            continue
        s = streams.setdefault((node, obj), [index, []])
        if index != s[0]:
            s[1].append(str(index - s[0]))
        s[0] = index
    return [steps for _, steps in streams.values()]


#: reads of the training window a gate's fresh learner is warmed on before it is scored
GATE_WARM_READS = 20_000


def judge_net(net, window: Sequence[tuple], holdout: Iterable[tuple], k: int = 5,
              **params) -> float:
    """The retrain gates' score of a step net (``None``: the learner without one): a fresh
    :class:`Prefetcher` with ``params`` and this net, warmed on the newest
    :data:`GATE_WARM_READS` reads of ``window``, then its hit ratio at ``k`` on ``holdout``
    (:meth:`Prefetcher.score`). The learner is the one that serves; only the net differs."""
    learner = Prefetcher(**params)
    learner.net = net
    for node, block, obj, index, count in window[-GATE_WARM_READS:]:
        learner.observe(node, block, obj, index, count)
    return learner.score(holdout, k)


class Prefetcher(OnlineModel):
    default_name = "prefetcher"

    def __init__(self, model_config: ModelConfig | None = None, *, window: int = 8,
                 horizon: int = 16, min_confidence: float = 0.1, max_k: int = 8,
                 successor_capacity: int = 200_000, max_nodes: int = 100_000,
                 max_streams: int = 100_000, max_positions: int = 200_000,
                 max_scored_nodes: int = 4096, max_profiled_nodes: int = 1024,
                 score_every: int = 1, halflife: float = 2_000.0, prior: float = 4.0) -> None:
        super().__init__(model_config)
        self.window, self.horizon, self.min_confidence = window, horizon, min_confidence
        self.max_k, self.max_nodes, self.max_streams = max_k, max_nodes, max_streams
        self.max_positions, self.prior = max_positions, prior
        self.max_scored_nodes, self.max_profiled_nodes = max_scored_nodes, max_profiled_nodes
        self.score_every = score_every
        self._scored_share = 0x10000 // score_every
        self.decay = 0.5 ** (1.0 / halflife)
        self.successors = SuccessorTable(capacity=successor_capacity, max_nodes=max_nodes)
        self._net = None
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()
        self._last: OrderedDict[str, tuple[str, str | None, int | None]] = OrderedDict()
        self._hash_at: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._position: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._outcomes: OrderedDict[str, _Outcomes] = OrderedDict()
        # bucket, and source -> [read, proposed], decayed
        self._calibration: dict[Any, list[float]] = {}
        self._pairs: dict[tuple, tuple[list[float], list[float]]] = {}  # bucket -> its, source's
        self._cached: OrderedDict[str, dict] = OrderedDict()
        self._reuse: OrderedDict[str, ReuseProfile] = OrderedDict()  # node -> its reads' reuse

    @property
    def net(self):
        """The step net (a :class:`~pakit_stream.serving.prefetch.ServedPrefetchModel`), or
        ``None``; set by the retrainer's swap, the gates and ``evaluate``. Its proposals are
        scored from the reads after it joins, like every other source's."""
        return self._net

    @net.setter
    def net(self, model) -> None:
        self._net = model
        self._cached.clear()  # proposals made without it (or with the previous one)

    # learning ------------------------------------------------------------------------------
    def observe(self, node_id: str, block_hash: str, object_id: str | None = None,
                chunk_index: int | None = None, chunk_count: int = 1) -> None:
        """Learn one read: score the node's open proposals, update its stream and the
        successor table, and open the proposals that follow it."""
        clock = self._score(node_id, block_hash, object_id, chunk_index)
        reuse = self._bounded(self._reuse, node_id, self.max_profiled_nodes)
        if reuse is None:
            reuse = self._reuse[node_id] = ReuseProfile()
        reuse.observe(block_hash)
        self.successors.observe(node_id, block_hash, k=0)
        if object_id is not None and chunk_index is not None:
            stream = self._bounded(self._streams, (node_id, object_id), self.max_streams)
            if stream is None:
                stream = self._streams[(node_id, object_id)] = _Stream(self.window)
            if stream.last is not None and chunk_index != stream.last:
                stream.steps.append(chunk_index - stream.last)
            # a read that starts where a recent one ended continues its run, even when other
            # reads came between (interleaved sequential streams, as AMP detects them)
            ends = stream.ends
            stream.run = ends.pop(chunk_index, 0) + 1
            ends[chunk_index + chunk_count] = stream.run
            if len(ends) > self.window * 4:
                ends.popitem(last=False)
            stream.last, stream.count = chunk_index, chunk_count
            self._remember(self._hash_at, (object_id, chunk_index), block_hash,
                           self.max_positions)
            self._remember(self._position, block_hash, (object_id, chunk_index),
                           self.max_positions)
        self._remember(self._last, node_id, (block_hash, object_id, chunk_index), self.max_nodes)
        if (clock * 0x9E3779B1) & 0xFFFF < self._scored_share:  # a sample of the reads
            candidates = self._candidates(node_id, self.max_k)
            self._remember(self._cached, node_id, candidates, self.max_nodes)
            self._open(node_id, candidates)
        else:
            self._cached.pop(node_id, None)  # made when the node asks
        self.n_updates += 1

    def learn_record(self, record: Mapping[str, Any]) -> None:
        self.observe(record.get("node_id", "-"), record["block_hash"], record.get("object_id"),
                     record.get("chunk_index"), record.get("chunk_count") or 1)

    @staticmethod
    def _bounded(table: OrderedDict, key, cap: int):
        value = table.get(key)
        if value is not None:
            table.move_to_end(key)
        elif len(table) >= cap:
            table.popitem(last=False)
        return value

    def _remember(self, table: OrderedDict, key, value, cap: int) -> None:
        self._bounded(table, key, cap)
        table[key] = value

    def _score(self, node_id: str, block_hash: str, object_id, chunk_index) -> int:
        out = self._bounded(self._outcomes, node_id, self.max_scored_nodes)
        if out is None:
            out = self._outcomes[node_id] = _Outcomes()
        out.clock += 1
        queue, clock, opened = out.queue, out.clock, out.open
        while queue and queue[0][0] < clock:  # not read within the horizon: a miss
            _, key, group = queue.popleft()
            if not group:  # read in time
                continue
            waiting = opened[key]
            if waiting[0] is group:  # groups expire in the order they were opened
                del waiting[0]
            else:
                waiting[:] = [g for g in waiting if g is not group]
            if not waiting:
                del opened[key]
            self._credit(group, 0.0)
        position = (object_id, chunk_index)
        if object_id is None:  # a node without positions reads a block proposed by position
            position = self._position.get(block_hash)
        for key in (block_hash, position):
            groups = opened.pop(key, None)
            if groups is not None:
                for group in groups:
                    self._credit(group, 1.0)
                    group.clear()
        return clock

    def _credit(self, buckets: list[tuple], read: float) -> None:
        """Count one proposal, read or not, in each of its buckets and their sources."""
        d, pairs = self.decay, self._pairs
        for bucket in buckets:
            pair = pairs.get(bucket)
            if pair is None:
                pair = self._pair(bucket)
            for c in pair:  # the bucket, and its source as a whole
                c[0] = c[0] * d + read
                c[1] = c[1] * d + 1.0

    def _pair(self, bucket: tuple) -> tuple[list[float], list[float]]:
        cal = self._calibration
        pair = (cal.setdefault(bucket, [0.0, 0.0]), cal.setdefault(bucket[0], [0.0, 0.0]))
        self._pairs[bucket] = pair
        return pair

    def _open(self, node_id: str, candidates) -> None:
        out = self._outcomes[node_id]
        expires = out.clock + self.horizon
        opened, append = out.open, out.queue.append
        for key, (_, buckets) in candidates.items():
            group = buckets.copy()
            waiting = opened.get(key)
            if waiting is None:
                opened[key] = [group]
            else:
                waiting.append(group)
            append((expires, key, group))

    # proposing -----------------------------------------------------------------------------
    def confidence(self, bucket: tuple) -> float:
        """The decayed share of a bucket's proposals that were read within the horizon,
        shrunk towards the share of all proposals of its source."""
        c = self._calibration.get(bucket)
        base = self._source_rate(bucket[0])
        if c is None:
            return base
        return (c[0] + self.prior * base) / (c[1] + self.prior)

    def _source_rate(self, source: str) -> float:
        read, seen = self._calibration.get(source, (0.0, 0.0))
        return (read + 0.5) / (seen + 5.0)  # a weak prior of 10%

    def _candidates(self, node_id: str, k: int, net=None, at: tuple | None = None
                    ) -> dict[Any, tuple[tuple, list[tuple]]]:
        """Every proposal, ``(hash, object, index)``, after the node's last read (or after
        ``at``, given the same way), by key (its position when known, else its hash), with the
        buckets it falls in (unranked); ``net`` stands in for the step net."""
        last = at or self._last.get(node_id)
        if last is None:
            return {}
        block_hash, object_id, index = last
        out: dict[Any, tuple[tuple, list[tuple]]] = {}
        stream = None
        if object_id is not None and index is not None:
            stream = self._streams.get((node_id, object_id))
        if stream is not None:
            hash_at, run, count = self._hash_at.get, min(stream.run, self.window), stream.count
            for j in range(1, k + 1):
                at = index + j * count
                if at < 0:
                    continue
                key = (object_id, at)
                entry = out.get(key)
                if entry is None:
                    out[key] = ((hash_at(key), object_id, at), [("next", j, run)])
                else:
                    entry[1].append(("next", j, run))
            steps = stream.steps
            if steps:
                step = steps[-1]
                support = steps.count(step)
                if support * 2 <= len(steps):  # the most frequent; among ties, the most recent
                    step, support = max(Counter(reversed(steps)).items(), key=_count)
                agrees = steps[-1] == step
                for j in range(1, k + 1):
                    at = index + j * step
                    if at < 0:
                        continue
                    key = (object_id, at)
                    bucket = ("stride", j, support, agrees)
                    entry = out.get(key)
                    if entry is None:
                        out[key] = ((hash_at(key), object_id, at), [bucket])
                    else:
                        entry[1].append(bucket)
        for nxt, bucket, (obj, idx) in self._successor_buckets(block_hash, k):
            self._add(out, obj, idx, bucket, nxt)
        net = net or self.net
        if net is not None and stream is not None and stream.steps:
            for r, (step, p) in enumerate(self._net_steps(net, stream.steps, k), 1):
                self._add(out, object_id, index + step,
                          ("net", r, min(int(p * 10), 9)), None)
        return out

    def _successor_buckets(self, block_hash: str, k: int):
        """``(successor, bucket, (object, index))`` for the ``k`` most counted successors of
        ``block_hash`` (position ``(None, None)`` when unknown)."""
        ranked, total = self.successors.ranked(block_hash, k)
        if not ranked:
            return []
        depth, position, nowhere = min(int(math.log2(total)), 6), self._position.get, (None, None)
        return [(nxt, ("successor", r, min(int(count / total * 10), 9), depth),
                 position(nxt, nowhere)) for r, (nxt, count) in enumerate(ranked, 1)]

    def _add(self, out, object_id, index, bucket, block_hash) -> None:
        if index is not None and index < 0:
            return  # before the object's start: no such chunk
        if object_id is not None and index is not None:
            key = (object_id, index)
            block_hash = block_hash or self._hash_at.get(key)
        else:
            key = block_hash
        entry = out.get(key)
        if entry is None:
            out[key] = ((block_hash, object_id, index), [bucket])
        else:  # named by two sources: scored in both buckets, ranked by the surer
            entry[1].append(bucket)

    @staticmethod
    def _net_steps(net, steps: Sequence[int], k: int) -> list[tuple[int, float]]:
        scores = net.scores([str(s) for s in steps])
        scores = scores - scores.max()
        probs = np.exp(scores)
        probs /= probs.sum()
        probs[0] = 0.0  # "another step" names no block
        top = np.argsort(-probs)[:k]
        return [(int(net.vocab[i]), float(probs[i])) for i in top if probs[i] > 0]

    def threshold(self, node_id: str, cache_blocks: int | None = None) -> float:
        """The confidence a proposal needs to be served: with ``cache_blocks``, what a
        prefetch into the node's LRU cache of that size costs (the eviction hazard of its reads,
        :meth:`ReuseProfile.hazard <pakit_stream.learners.reuse.ReuseProfile.hazard>`);
        without it, or before enough of its reads were sampled, ``min_confidence``."""
        reuse = self._reuse.get(node_id) if cache_blocks else None
        cost = None if reuse is None else reuse.hazard(cache_blocks)
        return self.min_confidence if cost is None else cost

    def propose(self, node_id: str, k: int = 5, cache_blocks: int | None = None,
                net=None, position: tuple[str, int] | None = None) -> list[Proposal]:
        """The ``k`` most confident proposals after the node's last read, most confident
        first, each at least :meth:`threshold` (for a cache of ``cache_blocks``). ``net``, when
        given, proposes in place of the attached step net (a canary's arm,
        :mod:`pakit_stream.canary`); its proposals are scored in the net's buckets.

        ``position``, ``(object_id, chunk_index)``, is where the node reads now, when the
        node says so: its telemetry reaches this learner later than it asks, so the
        proposals continue its stream from there rather than from the last read seen."""
        last = self._last.get(node_id)
        if position is not None and (last is None or tuple(position) != last[1:]):
            at = (self._hash_at.get(tuple(position)), *position)
            candidates = self._candidates(node_id, self.max_k, net, at)
        elif net is not None and net is not self.net:
            candidates = self._candidates(node_id, self.max_k, net)
        elif (candidates := self._cached.get(node_id)) is None:
            candidates = self._candidates(node_id, self.max_k)
            self._remember(self._cached, node_id, candidates, self.max_nodes)
        floor = self.threshold(node_id, cache_blocks)
        ranked = []
        for (block_hash, object_id, index), buckets in candidates.values():
            c, source = max((self.confidence(b), b[0]) for b in buckets)
            if c >= floor:  # named by the surest of the sources that name it
                ranked.append(Proposal(block_hash, object_id, index, c, source))
        ranked.sort(key=lambda p: -p.confidence)
        return ranked[:k]

    def knows(self, node_id: str) -> bool:
        """Whether this learner has seen a read of ``node_id`` (and so proposes for it)."""
        return node_id in self._last

    def hit(self, node_id: str, block_hash: str, object_id: str | None = None,
            chunk_index: int | None = None, k: int = 5, net=None) -> bool:
        """Whether a read is among the ``k`` proposals the node would be served just before
        it (call it before :meth:`observe` of that read): the prequential hit ratio at k."""
        for p in self.propose(node_id, k, net=net):
            if p.block_hash == block_hash or (
                    object_id is not None and p.chunk_index == chunk_index
                    and p.object_id == object_id):
                return True
        return False

    def predict(self, request: Mapping[str, Any]) -> list[Proposal]:
        """``{node_id, k, cache_blocks, net, position}``: :meth:`propose` for a node whose
        reads this learner has seen (``cache_blocks``, optional, is the size of the node's cache
        in blocks; ``net``, optional, a step net in place of the attached one; ``position``,
        optional, the node's newest read ``(object_id, chunk_index)``). For a node it has not
        seen, ``recent_accesses`` (hashes, most recent last) asks the successor table alone."""
        node, k = request.get("node_id"), int(request.get("k", 5))
        cache = request.get("cache_blocks")
        if node is not None and self.knows(node):
            return self.propose(node, k, None if cache is None else int(cache),
                                request.get("net"), request.get("position"))
        recent = request.get("recent_accesses") or []
        if not recent:
            return []
        out = []
        for nxt, bucket, (obj, idx) in self._successor_buckets(recent[-1], k):
            c = self.confidence(bucket)
            if c >= self.min_confidence:
                out.append(Proposal(nxt, obj, idx, c, "successor"))
        return out

    def score(self, reads: Iterable[tuple], k: int = 5) -> float:
        """Hit ratio at ``k`` over ``reads`` (``(node, block, object, index, count)``, in
        order), test-then-train: each read is scored against the proposals made before it, then
        learned. The retrain gates judge a step net by this, on a copy warmed on the window."""
        hits = n = 0
        for node, block, obj, index, count in reads:
            if self.knows(node):
                hits += self.hit(node, block, obj, index, k)
                n += 1
            self.observe(node, block, obj, index, count)
        return hits / n if n else 0.0

    def calibration(self) -> dict[str, dict[str, float]]:
        """Per source: proposals scored and the share read within the horizon."""
        out = {}
        for source in SOURCES:
            read, n = self._calibration.get(source, (0.0, 0.0))
            out[source] = {"scored": n, "read_share": read / n if n else 0.0}
        return out

    def __getstate__(self):
        state = super().__getstate__()
        state["_cached"] = OrderedDict()  # proposals are remade at the next read
        state["_net"] = None  # the batch model is loaded from the registry, not checkpointed
        state["_pairs"] = {}  # rebuilt from the calibration as buckets are credited
        return state

    def __setstate__(self, state):
        state.setdefault("_reuse", OrderedDict())  # checkpoints from before the reuse profiles
        state.setdefault("max_profiled_nodes", 1024)
        state.setdefault("score_every", 1)
        state.setdefault("_scored_share", 0x10000)
        state["_pairs"] = {}
        super().__setstate__(state)

    def __len__(self) -> int:
        return len(self.successors)
