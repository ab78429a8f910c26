"""One Kafka message in, learners updated: the daemon's core, free of Faust.

:class:`Pipeline` owns the decoders, the learners, the offsets their state reflects and the
prequential (test-then-train) quality figures. The Faust agents call :meth:`Pipeline.handle` per
message; benchmarks and offline replay call :meth:`Pipeline.apply` with decoded events. A
snapshot of the learners *and* the offsets is taken in one synchronous step, so a checkpoint is
always a state together with exactly the messages it reflects.

>>> from pakit_stream.settings import Settings
>>> p = Pipeline(Settings())
>>> ev = (b'{"event_type": "block_accessed", "node_id": "n1", "ts": 1, "block_hash": "'
...       + b"ab" * 32 + b'", "cache_hit": true, "latency_ms": 0.4}')
>>> p.handle("pakit.access", 0, 0, ev), p.handle("pakit.access", 0, 0, ev)
([], None)
>>> p.applied["pakit.access"], p.offsets
(1, {'pakit.access/0': 1})
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
import zlib
from collections import deque
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from river import drift

from pakit_stream.events.decode import EventDecoder, Rejected
from pakit_stream.events.schema import TOPICS, BlockStored, Event
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.features import FeatureExtractor
from pakit_stream.learners import DeduplicationOptimizer, NetworkOptimizer, PeerSelector
from pakit_stream.learners.prefetch import Prefetcher
from pakit_stream.learners.codec import CodecCostModel, forward_us
from pakit_stream.metrics import Metrics
from pakit_stream.privacy import Crowds, private_mean
from pakit_stream.settings import Settings
from pakit_stream.specs import CODEC_MODEL, PREFETCH_MODEL, CodecSpec

__all__ = ["Pipeline", "SNAPSHOT_VERSION", "GLOBAL_TOPICS", "best_codec"]

log = logging.getLogger(__name__)
SNAPSHOT_VERSION = 1
#: the topics whose learners hold global state (the dedup index, the gossip model): every
#: worker of a consumer group learns every partition of them, so that any worker answers
GLOBAL_TOPICS = ("pakit.fingerprints", "pakit.gossip")
GLOBAL_SCOPE = "global:"
_encode = msgspec.json.Encoder().encode


def best_codec(event: BlockStored, cpu_bytes_per_us: float = 1.0) -> str | None:
    """The codec minimising ``compressed_size + cpu_bytes_per_us * (compress_us + decompress_us)``
    among those the node measured: the codec label of a stored block (``None`` if unmeasured)."""
    results = event.codec_results
    if not results:
        return None
    return min(results, key=lambda r: r.compressed_size
               + cpu_bytes_per_us * (r.compress_us + r.decompress_us)).algorithm


@dataclasses.dataclass(slots=True)
class _Message:
    """A decoded message between :meth:`Pipeline.begin` and :meth:`Pipeline.finish`."""

    topic: str
    key: str
    offset: int
    value: bytes | None
    events: list[Event]
    rejects: list[Rejected]
    busy: float  # seconds spent on it so far, waits excluded


class _Mean:
    """A running mean of values clipped to ``[lower, upper]``: one value moves it by at most
    ``(upper - lower) / n``, the sensitivity its private release assumes."""

    __slots__ = ("total", "n", "lower", "upper")

    def __init__(self, lower: float = -math.inf, upper: float = math.inf) -> None:
        self.total, self.n = 0.0, 0
        self.lower, self.upper = lower, upper

    def add(self, value: float) -> None:
        self.total += min(max(value, self.lower), self.upper)
        self.n += 1

    @property
    def value(self) -> float:
        return self.total / self.n if self.n else 0.0


# value bounds of each quality figure, which set the sensitivity of its private release
_QUALITY_BOUNDS = {"bandit_replay": (0.0, 1.0), "bandit_logged": (0.0, 1.0),
                   "gossip_reward": (-11.0, 1.0), "gossip_agreement": (0.0, 1.0),
                   "prefetch_hit5": (0.0, 1.0), "cache_hit": (0.0, 1.0), "codec_online": (0.0, 1.0)}


class Pipeline:
    """Decoders, learners, offsets and quality figures of one daemon worker."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 window: int = 50_000) -> None:
        self.settings = s = settings
        self.metrics = m = metrics or Metrics()
        self.features = FeatureExtractor()
        self.decoders = {t: EventDecoder(t, max_message_bytes=s.max_message_bytes,
                                         max_event_bytes=s.max_event_bytes) for t in TOPICS}
        self.peers = PeerSelector(latency_scale_ms=s.bandit_latency_scale_ms,
                                  failure_ms=s.bandit_failure_ms, max_pairs=s.bandit_max_pairs,
                                  max_peers=s.bandit_max_peers, halflife=s.bandit_halflife)
        self.network = NetworkOptimizer(message_cost=s.gossip_message_cost,
                                        coverage_target=s.gossip_coverage_target,
                                        miss_penalty=s.gossip_miss_penalty,
                                        epsilon=s.gossip_epsilon,
                                        control_cost=s.gossip_control_cost)
        self.dedup = DeduplicationOptimizer(threshold=s.lsh_threshold, capacity=s.lsh_capacity,
                                            max_candidates=s.lsh_max_candidates)
        #: what to prefetch: strides, successors and the served step net, ranked by how often
        #: each kind of proposal came true (one object for hints, gates and evaluate)
        self.prefetcher = Prefetcher(successor_capacity=s.successor_capacity,
                                     min_confidence=s.prefetch_min_confidence,
                                     horizon=s.prefetch_horizon,
                                     score_every=s.prefetch_score_every)
        #: chooses codecs: online cost tables and experts (a served net joins as one)
        self.codec = CodecCostModel(cpu_bytes_per_us=s.codec_cpu_bytes_per_us,
                                    probe_us=s.codec_probe_us, lookup_us=s.codec_lookup_us,
                                    halflife=s.codec_halflife)
        #: recent (block, codec costs) samples from stored blocks, for the batch codec net:
        #: ``({"block_size", "node_id", "probe_ratio", "features"}, {codec: (bytes, µs)})``
        self.codec_window: deque[tuple[dict[str, Any], dict[str, tuple[float, float]]]] = deque(
            maxlen=window)
        self._codec_model = None
        self.codec_new = 0  # labelled blocks since the last retrain
        self.codec_drift = False
        self._codec_adwin = drift.ADWIN()
        #: recent reads ``(node, block, object, chunk index, chunk count)``, for the batch
        #: prefetch model (object and index are ``None`` when the node sent no position)
        self.access_window: deque[tuple[str, str, str | None, int | None, int]] = deque(
            maxlen=settings.prefetch_window)
        self.prefetch_new = 0
        #: model name -> the candidate serving a share of the nodes while both arms are
        #: compared on the same events (:mod:`pakit_stream.canary`); not checkpointed
        self.canaries: dict[str, Any] = {}
        #: with k-anonymity on, how many distinct nodes reported each block, object, peer
        #: and topic, up to k: a hint names nothing fewer nodes reported (``HintService``)
        self.crowds = None
        if s.k_anonymity > 1:  # bounded as the learners whose answers they guard
            self.crowds = Crowds(s.k_anonymity, capacities={
                "read": s.successor_capacity, "object": s.successor_capacity,
                "fingerprint": s.lsh_capacity, "peer": s.bandit_max_peers})
        self.offsets: dict[str, int] = {}
        #: CRC-32 of the last applied message of each partition: on resume, the record before
        #: the saved offset must still carry it, or the log was recreated (a restarted
        #: memory-only broker) and the offset belongs to a log that no longer exists
        self.tails: dict[str, int] = {}
        self.applied: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._per_event = dict.fromkeys(TOPICS, 20e-6)  # seconds per event, measured
        self._in_flight = 0
        #: where the global reader starts partitions an older checkpoint has no offset for
        self.legacy_global_offsets: dict[str, int] = {}
        #: a message was cancelled between two of its slices: the state holds part of it
        self.interrupted = False
        self._open, self._idle = asyncio.Event(), asyncio.Event()
        self._open.set()
        #: held by a message from its decoding to its last slice: the agents take turns by
        #: message, not by slice, so that between two slices only hints and timers run
        self._turn = asyncio.Lock()
        self.quality = {name: _Mean(*bounds) for name, bounds in _QUALITY_BOUNDS.items()}
        self._gauges = {"bandit_replay": m.bandit_reward, "bandit_logged": m.bandit_logged_reward,
                        "gossip_reward": m.gossip_reward, "gossip_agreement": m.gossip_agreement,
                        "prefetch_hit5": m.prefetch_hit, "cache_hit": m.cache_hit,
                        "codec_online": m.codec_efficiency}
        self._dp_rng = random.SystemRandom()
        self._released: dict[str, tuple[float, float]] = {}  # figure -> (when, private value)
        self._peer_seen = self._gossip_seen = self._block_seen = self._access_seen = 0
        self._handlers = {
            "pakit.blocks": self._on_blocks,
            "pakit.access": self._on_access,
            "pakit.fingerprints": self._on_fingerprints,
            "pakit.peers": self._on_peers,
            "pakit.gossip": self._on_gossip,
        }
        m = self.metrics
        self._m_ok = {t: m.events.labels(topic=t, outcome="ok") for t in TOPICS}
        self._m_messages = {t: m.messages.labels(topic=t) for t in TOPICS}
        self._m_seconds = {t: m.processing.labels(topic=t) for t in TOPICS}
        self._m_updates = {t: m.updates.labels(learner=n) for t, n in (
            ("pakit.blocks", "codec_window"), ("pakit.access", "prefetcher"),
            ("pakit.fingerprints", "dedup_lsh"), ("pakit.peers", "peer_bandit"),
            ("pakit.gossip", "gossip_q"))}

    @property
    def prefetch_model(self):
        """The serving step net (numpy), swapped in by the retrainer; ``None`` before the
        first. Assigning it makes it a source of :attr:`prefetcher`."""
        return self.prefetcher.net

    @prefetch_model.setter
    def prefetch_model(self, model) -> None:
        self.prefetcher.net = model

    @property
    def codec_model(self):
        """The serving codec net (numpy), swapped in by the retrainer; ``None`` before the
        first. Assigning it makes it an expert of :attr:`codec` (what asking it costs a node
        is measured on the spot; its ``relative_cost``, when set, is the gate's evidence)."""
        return self._codec_model

    @codec_model.setter
    def codec_model(self, model) -> None:
        us = 0.0
        if model is not None:
            us = getattr(model, "ask_us", None)
            if us is None:  # not measured where it was loaded
                us = self.codec_ask_us(model)
        self.codec.attach_net(model, us, getattr(model, "relative_cost", None))
        self._codec_model = model

    def codec_ask_us(self, model) -> float:
        """What asking the codec net costs a node, µs: the probe, the entropy and a forward
        pass (measured here, on a typical block's features)."""
        s = self.settings
        probe = {"block_size": 65536, "probe_ratio": 0.5, "entropy": 5.0}
        return s.codec_probe_us + s.codec_entropy_us + forward_us(
            model, self.features.extract_features({"event_type": "block_stored", **probe}))

    # -- per message ------------------------------------------------------------------------
    def handle(self, topic: str, partition: int, offset: int, value: bytes | None
               ) -> list[Rejected] | None:
        """Decode and learn from one message; returns what must go to the DLQ.

        Returns ``None`` (and does nothing) for a message the state already reflects: one
        below the restored offset of its partition, replayed after a restart.
        """
        message = self.begin(topic, partition, offset, value)
        if message is None:
            return None
        self._apply_slice(message, 0, len(message.events))
        return self.finish(message)

    async def handle_sliced(self, topic: str, partition: int, offset: int,
                            value: bytes | None, *, learn: bool = True, scope: str = "",
                            count: bool = True) -> list[Rejected] | None:
        """:meth:`handle`, yielding to the event loop between slices of the envelope's events
        so that no slice holds the loop longer than ``settings.apply_slice_s`` (the slice's
        size follows the topic's measured cost per event). Hints between two slices see every
        event before them applied; the message's offset is marked after its last.

        For the topics every worker learns in full (:data:`GLOBAL_TOPICS`) the daemon reads
        each message twice: the consumer group's owner of its partition validates it
        (``learn=False``: decoded, its rejects counted and dead-lettered, its offset marked)
        and every worker's replica reader learns it (``scope="global:"``, ``count=False``: its
        offset is kept apart, under the scope, and its rejects are not counted again).

        Messages take turns: one is applied whole, in its slices, before the next begins.
        Learners interleaved slice by slice evict each other's state from the CPU caches
        (``benchmarks/slices.py``: 0.5 ms slices of five messages in turn took 1.10–1.13× the
        time of the same slices one message at a time)."""
        async with self._turn:
            return await self._handle_sliced(topic, partition, offset, value, learn, scope,
                                             count)

    async def _handle_sliced(self, topic: str, partition: int, offset: int,
                             value: bytes | None, learn: bool, scope: str, count: bool
                             ) -> list[Rejected] | None:
        message = self.begin(topic, partition, offset, value, scope)
        if message is None:
            return None
        total, i, budget = len(message.events) if learn else 0, 0, self.settings.apply_slice_s
        while i < total:
            n = min(total - i, max(1, int(budget / self._per_event[topic])))
            took = self._apply_slice(message, i, i + n)
            self._per_event[topic] += 0.2 * (took / n - self._per_event[topic])
            i += n
            if i < total:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    # the state now holds part of a message whose offset is not marked: no
                    # snapshot may be taken of it (the daemon's final checkpoint is skipped)
                    self.interrupted = True
                    raise
        return self.finish(message, count)

    def _apply_slice(self, message: _Message, lo: int, hi: int) -> float:
        started = time.perf_counter()
        message.rejects += self.apply(message.topic, message.events[lo:hi], first=lo)
        took = time.perf_counter() - started
        message.busy += took
        return took

    def begin(self, topic: str, partition: int, offset: int, value: bytes | None,
              scope: str = "") -> _Message | None:
        """Decode a message (``None`` if the state already reflects it); :meth:`apply` its
        events, then :meth:`finish` it. ``scope`` prefixes the key its offset is kept under."""
        key = f"{scope}{topic}/{partition}"
        expected = self.offsets.get(key)
        if expected is not None and offset < expected:
            self.metrics.duplicates.labels(topic=topic).inc()
            return None
        started = time.perf_counter()
        decoded = self.decoders[topic].decode(value)
        return _Message(topic, key, offset, value, decoded.events, list(decoded.rejects),
                        time.perf_counter() - started)

    def finish(self, message: _Message, count: bool = True) -> list[Rejected]:
        """Count the message's rejects and mark its offset; returns what goes to the DLQ."""
        started, topic = time.perf_counter(), message.topic
        for r in message.rejects if count else ():
            self.metrics.events.labels(topic=topic, outcome=r.kind).inc()
        self.mark(message.key, message.offset, message.value)
        if count:  # a message of a global topic is counted once, where it is validated
            self._m_messages[topic].inc()
            self._m_seconds[topic].observe(message.busy + time.perf_counter() - started)
        return message.rejects

    @asynccontextmanager
    async def applying(self):
        """Held by an agent from the start of a message until its dead letters are queued:
        :meth:`quiet` waits for every holder to let go, and holds new ones back."""
        await self._open.wait()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @asynccontextmanager
    async def quiet(self):
        """A moment at which no message is half applied (a checkpoint's snapshot): waits for
        the agents' messages in flight to finish and holds new ones until it exits."""
        self._open.clear()
        try:
            while self._in_flight:
                self._idle.clear()
                await self._idle.wait()
            yield
        finally:
            self._open.set()

    def mark(self, key: str, offset: int, value: bytes | None) -> None:
        """Record that the message at ``offset`` of partition ``key`` (``topic/partition``)
        is reflected in the state."""
        self.offsets[key] = offset + 1
        self.tails[key] = zlib.crc32(value or b"")

    def forget(self, key: str) -> None:
        """The partition's log was recreated: its next message, from offset 0, is new."""
        self.offsets.pop(key, None)
        self.tails.pop(key, None)

    def apply(self, topic: str, events: list[Event], first: int = 0) -> list[Rejected]:
        """Learn from decoded events of ``topic``; events that make a learner fail are
        returned as ``error`` rejects instead of stopping the daemon (their ``index`` counted
        from ``first``, the place of ``events[0]`` in its envelope)."""
        if not events:
            return []
        errors = self._handlers[topic](events)
        if first:
            errors = [dataclasses.replace(r, index=r.index + first) for r in errors]
        ok = len(events) - len(errors)
        self.applied[topic] += ok
        self._m_ok[topic].inc(ok)
        self._m_updates[topic].inc(ok)
        return errors

    @staticmethod
    def _error(event: Event, index: int, exc: Exception) -> Rejected:
        log.debug("learner failed on an event", exc_info=exc)
        return Rejected(_encode(event), f"learner error: {type(exc).__name__}: {exc}", "error", index)

    # -- per topic --------------------------------------------------------------------------
    def _on_blocks(self, events: list[BlockStored]) -> list[Rejected]:
        errors, extract, window = [], self.features.extract_features, self.codec_window
        codec, online, adwin = self.codec, self.quality["codec_online"], self._codec_adwin
        crowds = self.crowds
        lam, every = codec.cpu_bytes_per_us, self.settings.eval_every
        labelled = 0
        for i, e in enumerate(events):
            try:
                if not e.codec_results:
                    continue
                costs = {r.algorithm: (r.compressed_size, r.compress_us + r.decompress_us)
                         for r in e.codec_results}
                x = {"block_size": e.block_size, "node_id": e.node_id,
                     "probe_ratio": e.probe_ratio, "features": extract(e)}
                self._block_seen += 1
                if e.block_size > 0 and self._block_seen % every == 0:  # test, then train
                    choice = codec.choose(e.block_size, e.node_id, e.probe_ratio, x["features"])
                    spent = {c: b + lam * us for c, (b, us) in costs.items()}
                    chosen = spent.get(choice.algorithm, max(spent.values()))
                    efficiency = min(spent.values()) / max(chosen + lam * choice.selection_us, 1e-9)
                    online.add(efficiency)
                    adwin.update(1.0 - efficiency)
                    if adwin.drift_detected:
                        self.codec_drift = True
                        self.metrics.codec_drift.inc()
                    canary = self.canaries.get(CODEC_MODEL)
                    if canary is not None and self._codec_model is not None:
                        arm = CodecSpec.arm_quality
                        canary.add(arm(self._codec_model, x, spent, lam, choice.algorithm),
                                   arm(canary.model, x, spent, lam, choice.algorithm))
                codec.learn_one(x, costs)
                window.append((x, costs))
                if crowds is not None:
                    crowds.add("codec", "-", e.node_id)
                labelled += 1
            except Exception as exc:
                errors.append(self._error(e, i, exc))
        self.codec_new += labelled
        if labelled:
            self._publish("codec_online")
        return errors

    def _on_access(self, events) -> list[Rejected]:
        errors, prefetcher, window, crowds = [], self.prefetcher, self.access_window, self.crowds
        hit5, hits = self.quality["prefetch_hit5"], self.quality["cache_hit"]
        every = self.settings.eval_every
        for i, e in enumerate(events):
            try:
                self._access_seen += 1
                if self._access_seen % every == 0 and prefetcher.knows(e.node_id):
                    hit = prefetcher.hit(e.node_id, e.block_hash, e.object_id, e.chunk_index, 5)
                    hit5.add(hit)
                    canary = self.canaries.get(PREFETCH_MODEL)
                    if canary is not None and prefetcher.net is not None:
                        canary.add(hit, prefetcher.hit(e.node_id, e.block_hash, e.object_id,
                                                       e.chunk_index, 5, net=canary.model))
                prefetcher.observe(e.node_id, e.block_hash, e.object_id, e.chunk_index,
                                   e.chunk_count)
                hits.add(e.cache_hit)
                window.append((e.node_id, e.block_hash, e.object_id, e.chunk_index,
                               e.chunk_count))
                if crowds is not None:
                    crowds.add("read", e.block_hash, e.node_id)
                    if e.object_id is not None:
                        crowds.add("object", e.object_id, e.node_id)
            except Exception as exc:
                errors.append(self._error(e, i, exc))
        self.prefetch_new += len(events) - len(errors)
        self._publish("prefetch_hit5")
        self._publish("cache_hit")
        return errors

    def _on_fingerprints(self, events) -> list[Rejected]:
        errors, dedup = [], self.dedup
        try:  # the envelope in one vectorised insert
            dedup.add_many([e.block_hash for e in events], [e.minhash for e in events])
        except Exception:
            # add_many validates every row before it changes anything: index one by one, so
            # that only the events that fail are rejected
            for i, e in enumerate(events):
                try:
                    dedup.add(e.block_hash, e.minhash)
                except Exception as exc:
                    errors.append(self._error(e, i, exc))
        if self.crowds is not None:
            refused = {r.index for r in errors}
            for i, e in enumerate(events):
                if i not in refused:
                    self.crowds.add("fingerprint", e.block_hash, e.node_id)
        self.metrics.lsh_entries.set(len(dedup))
        return errors

    def _on_peers(self, events) -> list[Rejected]:
        errors, peers, every, crowds = [], self.peers, self.settings.eval_every, self.crowds
        replay, logged = self.quality["bandit_replay"], self.quality["bandit_logged"]
        for i, e in enumerate(events):
            try:
                r = peers.reward(e.success, e.latency_ms)
                self._peer_seen += 1
                if self._peer_seen % every == 0:  # test, then train
                    choice = peers.select(e.candidates, e.context, e.block_size, e.node_id, e.ts)
                    if choice.source == "learned" and choice.peer_id == e.peer_id:
                        replay.add(r)
                peers.learn_fetch(e.peer_id, e.success, e.latency_ms, e.block_size, e.context,
                                  e.node_id, e.ts)
                logged.add(r)
                if crowds is not None:
                    crowds.add("peer", e.peer_id, e.node_id)
            except Exception as exc:
                errors.append(self._error(e, i, exc))
        self._publish("bandit_replay")
        self._publish("bandit_logged")
        self.metrics.bandit_peers.set(peers.n_peers)
        return errors

    def _on_gossip(self, events) -> list[Rejected]:
        errors, net, every, crowds = [], self.network, self.settings.eval_every, self.crowds
        reward, agree = self.quality["gossip_reward"], self.quality["gossip_agreement"]
        for i, e in enumerate(events):
            try:
                self._gossip_seen += 1
                if self._gossip_seen % every == 0:  # test, then train
                    greedy = net.predict({"network_size": e.network_size,
                                          "avg_latency_ms": e.avg_latency_ms,
                                          "message_loss_rate": e.message_loss_rate})
                    if greedy["source"] == "learned":
                        agree.add((e.mode, e.fanout, e.ttl, e.pull_rounds) == (
                            greedy["mode"], greedy["fanout"], greedy["ttl"],
                            greedy["pull_rounds"]))
                reward.add(net.learn_round(e.network_size, e.avg_latency_ms, e.message_loss_rate,
                                           e.fanout, e.ttl, e.coverage, e.messages_sent, e.mode,
                                           e.pull_rounds, e.control_messages))
                if crowds is not None:
                    crowds.add("gossip", "-", e.node_id)
            except Exception as exc:
                errors.append(self._error(e, i, exc))
        self._publish("gossip_reward")
        self._publish("gossip_agreement")
        return errors

    def _publish(self, name: str) -> None:
        """Set a quality gauge: the running mean, or, with ``dp_epsilon``, a Laplace-noised
        release of it, re-drawn at most once per ``dp_release_s``."""
        self._gauges[name].set(self.quality_value(name))

    def quality_value(self, name: str) -> float:
        """A quality figure as it may leave the process (see :mod:`pakit_stream.privacy`)."""
        q, eps = self.quality[name], self.settings.dp_epsilon
        if eps <= 0:
            return q.value
        now = time.monotonic()
        last = self._released.get(name)
        if last is None or now - last[0] >= self.settings.dp_release_s:
            lower, upper = _QUALITY_BOUNDS[name]
            total = min(max(q.total, lower * q.n), upper * q.n)
            last = self._released[name] = (now, private_mean(total, q.n, eps, self._dp_rng,
                                                             lower, upper))
        return last[1]

    # -- state ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Learners, offsets and counters at this instant (call it between messages)."""
        return {
            "version": SNAPSHOT_VERSION,
            "created": time.time(),
            "offsets": dict(self.offsets),
            "tails": dict(self.tails),
            "applied": dict(self.applied),
            "quality": {k: (v.total, v.n) for k, v in self.quality.items()},
            "seen": (self._peer_seen, self._gossip_seen),
            "learners": {"peers": self.peers, "network": self.network, "dedup": self.dedup,
                         "prefetcher": self.prefetcher, "codec": self.codec},
            "codec_window": list(self.codec_window),
            "access_window": list(self.access_window),
            "crowds": self.crowds,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ModelLoadError(f"snapshot version {snap.get('version')} is not "
                                 f"{SNAPSHOT_VERSION}")
        self.offsets = dict(snap["offsets"])
        if not any(k.startswith(GLOBAL_SCOPE) for k in self.offsets):
            # a checkpoint from before every worker learned the global topics: its state
            # reflects the partitions this worker owned, up to the group's offsets, which is
            # where the global reader starts them (the group's own move on from there)
            self.legacy_global_offsets = {GLOBAL_SCOPE + k: v for k, v in self.offsets.items()
                                          if k.split("/")[0] in GLOBAL_TOPICS}
        self.tails = dict(snap.get("tails", {}))  # older checkpoints have none
        self.applied.update(snap["applied"])
        for k, (total, n) in snap["quality"].items():
            if k in self.quality:  # figures older versions kept under other names start afresh
                self.quality[k].total, self.quality[k].n = total, n
        self._peer_seen, self._gossip_seen = snap["seen"]
        learners = snap["learners"]
        self.peers = learners["peers"]
        if hasattr(learners["network"], "rounds"):  # older versions kept a table of cells
            self.network = learners["network"]
        self.dedup = learners["dedup"]
        if "prefetcher" in learners:
            net, self.prefetcher = self.prefetcher.net, learners["prefetcher"]
            self.prefetcher.net = net  # the serving net is the registry's, not the checkpoint's
        else:  # older checkpoints kept the successor table alone
            self.prefetcher.successors = learners["successors"]
        if "codec" in learners:  # older checkpoints have no codec tables
            self.codec = learners["codec"]
            self.codec_model = self._codec_model  # the serving net rejoins the experts
        self.codec_window.extend(snap["codec_window"])
        # reads: (node, block, object, index, count); older versions kept (node, block)
        self.access_window.extend(r if len(r) == 5 else (*r, None, None, 1)
                                  for r in snap.get("access_window", ()))
        crowds = snap.get("crowds")  # kept only while k is what it was
        if self.crowds is not None and crowds is not None and crowds.k == self.crowds.k:
            self.crowds = crowds
        self.metrics.lsh_entries.set(len(self.dedup))
        self.metrics.bandit_peers.set(self.peers.n_peers)

    def stats(self) -> dict[str, Any]:
        """What the learners know, for ``/health`` and the demo's report."""
        return {
            "applied": dict(self.applied),
            "offsets": dict(self.offsets),
            "learners": {
                "peers": {"peers": self.peers.n_peers, "updates": self.peers.n_updates},
                "network": {"states": self.network.n_states, "updates": self.network.n_updates},
                "dedup": {"entries": len(self.dedup), "updates": self.dedup.n_updates,
                          "evictions": self.dedup.evictions},
                "prefetcher": {"blocks": len(self.prefetcher),
                               "updates": self.prefetcher.n_updates,
                               "proposals": self.prefetcher.calibration()},
                "codec": {"updates": self.codec.n_updates, "cells": len(self.codec._cells)},
                "codec_window": len(self.codec_window),
                "codec_model": getattr(self.codec_model, "version", None),
                "access_window": len(self.access_window),
                "prefetch_model": getattr(self.prefetch_model, "version", None),
            },
            "quality": {k: round(self.quality_value(k), 6) for k in self.quality},
            "canaries": {name: c.report() for name, c in self.canaries.items()},
        }
