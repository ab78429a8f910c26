"""Hints for nodes, answered from the learners' current state without waiting on ingestion.

Agents apply each Kafka message on the event loop in slices of events
(:meth:`Pipeline.handle_sliced <pakit_stream.pipeline.Pipeline.handle_sliced>`), so between two
slices every learner has whole events applied; a hint is computed in one synchronous step at
such a point and never awaits event processing. Each hint says where its answer came from: ``learned``,
``explore`` (gossip exploration) or ``fallback`` (random peer; push with fanout 6 / TTL 10; exact
match only; nothing to prefetch).

With ``PAKIT_STREAM_K_ANONYMITY=k`` > 1, a hint reveals nothing fewer than ``k`` distinct nodes
reported (:class:`~pakit_stream.privacy.Crowds`): it names only blocks, objects and peers that
many nodes read, fingerprinted or fetched from; a learned network or codec answer needs that
many reporting nodes; and no answer draws on what the named node alone sent (its pair latencies,
its codec costs, its cache profile), since any caller can name any node.

>>> from pakit_stream.settings import Settings
>>> from pakit_stream.pipeline import Pipeline
>>> hints = HintService(Pipeline(Settings()))
>>> hint = hints.network(b'{"network_size": 100, "avg_latency_ms": 30, "message_loss_rate": 0}')
>>> hint["mode"], hint["fanout"], hint["ttl"], hint["pull_rounds"], hint["source"]
('push', 6, 10, 0, 'fallback')
>>> hints.peer(b'{"node_id": "n1", "available_peers": []}')
Traceback (most recent call last):
...
pakit_stream.serving.hints.BadRequest: Expected `array` of length >= 1 - at `$.available_peers`
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from pakit_stream.events.schema import (BlockHash, ContextKey, Fraction, Identifier, Millis,
                                        check_peer_context)
from pakit_stream.features import codec_features
from pakit_stream.serving.answers import (CodecPolicyAnswer, CompressionHint, Health,
                                          NetworkHint, PeerHint, PrefetchHint, SimilarHint)
from pakit_stream.exceptions import InvalidEventError
from pakit_stream.learners.codec import CodecChoice, CodecPolicy
from pakit_stream.learners.network import fallback_answer
from pakit_stream.learners.peers import PeerChoice
from pakit_stream.learners.prefetch import Proposal
from pakit_stream.specs import CODEC_MODEL, PREFETCH_MODEL

if TYPE_CHECKING:
    from pakit_stream.metrics import Metrics
    from pakit_stream.pipeline import Pipeline

__all__ = ["HintService", "Meter", "BadRequest", "HINTS"]

#: longest a compiled codec policy is served before it is compiled again (seconds)
POLICY_TTL_S = 5.0
#: the hint kinds, as metrics and routes name them
HINTS = ("peer", "network", "similar", "compression", "prefetch", "codec_policy")


class BadRequest(InvalidEventError):
    """A hint request that does not follow the API; its reason goes back in the HTTP body."""


class PeerHintRequest(Struct, forbid_unknown_fields=True):
    node_id: Identifier
    available_peers: Annotated[list[Identifier], Meta(min_length=1, max_length=256)]
    context: Annotated[dict[ContextKey, float], Meta(max_length=16)] = {}
    block_size: Annotated[int, Meta(ge=0)] | None = None


class NetworkHintRequest(Struct, forbid_unknown_fields=True):
    avg_latency_ms: Millis
    message_loss_rate: Fraction
    network_size: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None
    node_id: Identifier | None = None


class CompressionHintRequest(Struct, forbid_unknown_fields=True):
    block_size: Annotated[int, Meta(ge=0, le=1 << 40)]
    block_depth: Annotated[int, Meta(ge=0, le=1_000_000)] = 0
    entropy: Annotated[float, Meta(ge=0, le=8)] | None = None
    parent_count: Annotated[int, Meta(ge=0)] | None = None
    probe_ratio: Annotated[float, Meta(gt=0, le=16)] | None = None
    node_id: Identifier | None = None


class PrefetchHintRequest(Struct, forbid_unknown_fields=True):
    node_id: Identifier | None = None
    recent_accesses: Annotated[list[BlockHash], Meta(max_length=64)] = []
    k: Annotated[int, Meta(ge=1, le=100)] = 5
    cache_blocks: Annotated[int, Meta(ge=1, le=1 << 40)] | None = None
    object_id: BlockHash | None = None
    chunk_index: Annotated[int, Meta(ge=0, le=1 << 62)] | None = None

    def __post_init__(self):
        if self.node_id is None and not self.recent_accesses:
            raise InvalidEventError("give node_id, recent_accesses, or both")
        if (self.object_id is None) != (self.chunk_index is None):
            raise InvalidEventError("object_id and chunk_index come together")


class SimilarHintRequest(Struct, forbid_unknown_fields=True):
    block_hash: BlockHash
    top_k: Annotated[int, Meta(ge=1, le=100)] = 5
    # unset rather than None: a query's "null" is not a number, and lax conversion would read
    # it as None
    min_jaccard: Annotated[float, Meta(gt=0, le=1)] | UnsetType = UNSET


def _decode(body: bytes, kind):
    try:
        return msgspec.json.decode(body or b"", type=kind)
    except msgspec.MsgspecError as exc:
        raise BadRequest(str(exc)) from None


class Meter:
    """What a :class:`HintService` counts as it answers, into the worker's metrics (a hint
    replica counts through :class:`pakit_stream.daemon.replica.PipeMeter` instead)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._latency = {h: metrics.hint_latency.labels(hint=h) for h in HINTS}

    def hint(self, hint: str, source: str, seconds: float | None = None) -> None:
        """One hint answered from ``source`` (``error``: refused) in ``seconds``."""
        self.metrics.hints.labels(hint=hint, source=source).inc()
        if seconds is not None:
            self._latency[hint].observe(seconds)

    def canary(self, model: str, arm: str) -> None:
        """One hint answered by ``arm`` of ``model``'s canary."""
        self.metrics.canary_hints.labels(model=model, arm=arm).inc()

    def lsh_query(self, seconds: float) -> None:
        self.metrics.lsh_query.observe(seconds)


class HintService:
    """The hints, in process; the HTTP views call these same methods."""

    def __init__(self, pipeline: Pipeline, meter: Meter | None = None) -> None:
        self.pipeline = pipeline
        self.meter = meter or Meter(pipeline.metrics)
        self._rng = random.Random()
        self._policy: tuple[float, CodecPolicyAnswer] | None = None  # (compiled at, answer)

    def _done(self, hint: str, source: str, started: float) -> None:
        self.meter.hint(hint, source, time.perf_counter() - started)

    def _fail(self, hint: str, exc: Exception) -> None:
        self.meter.hint(hint, "error")
        raise exc

    def _parse(self, hint: str, body: bytes, kind):
        try:
            return _decode(body, kind)
        except BadRequest as exc:
            self._fail(hint, exc)

    def peer(self, body: bytes) -> PeerHint:
        """``{node_id, available_peers, context}`` → ``{peer_id, source, score}``; ``score``
        is the chosen peer's expected latency in ms for that node."""
        started = time.perf_counter()
        req = self._parse("peer", body, PeerHintRequest)
        crowds, peers, node = self.pipeline.crowds, req.available_peers, req.node_id
        if crowds is not None:  # pooled estimates of peers enough nodes fetched from
            peers = [p for p in peers if crowds.known("peer", p)]
            node = None
        try:
            check_peer_context(req.context)
            if peers:
                choice = self.pipeline.peers.select(peers, req.context, req.block_size, node)
            else:
                choice = PeerChoice(self._rng.choice(req.available_peers), "fallback", None)
        except ValueError as exc:  # a context key outside the whitelist
            self._fail("peer", BadRequest(str(exc)))
        self._done("peer", choice.source, started)
        return {"peer_id": choice.peer_id, "source": choice.source,
                "score": None if choice.score is None else round(choice.score, 3)}

    def network(self, body: bytes) -> NetworkHint:
        """``{network_size, avg_latency_ms, message_loss_rate}`` → ``{fanout, ttl, ...}``. With
        differential privacy on, the ``expected_*`` figures (the learner's estimates, which a
        setting seen in few rounds ties to those rounds) are left out: ``None``."""
        started = time.perf_counter()
        req = self._parse("network", body, NetworkHintRequest)
        if self._few("gossip"):
            answer = fallback_answer()
        else:
            answer = self.pipeline.network.predict(
                {"network_size": req.network_size, "avg_latency_ms": req.avg_latency_ms,
                 "message_loss_rate": req.message_loss_rate}, explore=True)
        if self.pipeline.settings.dp_epsilon > 0:
            answer.update({k: None for k in answer if k.startswith("expected_")})
        self._done("network", answer["source"], started)
        return answer

    def similar(self, block_hash: str, top_k: str | int = 5,
                min_jaccard: str | float | None = None) -> SimilarHint:
        """Blocks similar to ``block_hash`` → ``{similar: [{block_hash, jaccard}], source}``;
        ``min_jaccard`` (0 < x ≤ 1, default the index threshold) is the least estimated
        Jaccard an answer must have. Numbers may come as the strings of a query."""
        started = time.perf_counter()
        try:
            given = {"block_hash": block_hash, "top_k": top_k, "min_jaccard": min_jaccard}
            req = msgspec.convert({k: v for k, v in given.items() if v is not None},
                                  SimilarHintRequest, strict=False)
        except msgspec.MsgspecError as exc:
            self._fail("similar", BadRequest(str(exc)))
        dedup, crowds = self.pipeline.dedup, self.pipeline.crowds
        if req.block_hash in dedup and not self._few("fingerprint", req.block_hash):
            similar = dedup.find_similar_blocks(
                req.block_hash, req.top_k, None if req.min_jaccard is UNSET else req.min_jaccard)
            self.meter.lsh_query(dedup.last_query_seconds)
            if crowds is not None:
                similar = [s for s in similar if crowds.known("fingerprint", s["block_hash"])]
            source = "learned"
        else:  # never fingerprinted: all we can say is that the block is identical to itself
            similar, source = [], "fallback"
        self._done("similar", source, started)
        return {"block_hash": req.block_hash, "similar": similar, "source": source}

    def compression(self, body: bytes) -> CompressionHint:
        """``{block_size, node_id?, probe_ratio?, block_depth?, entropy?, parent_count?}`` →
        ``{algorithm, expert, probe_used, probe_recommended, model_version, source}``: the
        codec cost model's choice (see :mod:`pakit_stream.learners.codec`); before any data,
        zstd-3 above 100 kB, else lz4. ``probe_recommended`` says whether the rule for blocks
        of this size reads the probe: send ``probe_ratio`` for those."""
        started = time.perf_counter()
        req = self._parse("compression", body, CompressionHintRequest)
        codec = self.pipeline.codec
        features = None
        if req.probe_ratio is not None and req.entropy is not None:
            features = codec_features(req.block_size, req.block_depth, req.entropy,
                                      req.parent_count, req.probe_ratio)
        net = self._arm(CODEC_MODEL, req.node_id) or self.pipeline.codec_model
        if self._few("codec"):
            choice = CodecChoice.fallback(req.block_size)
        else:  # with k-anonymity on, pooled costs only: not the named node's own
            node = None if self.pipeline.crowds is not None else req.node_id
            choice = codec.choose(req.block_size, node, req.probe_ratio, features, net)
        answer = {"algorithm": choice.algorithm, "expert": choice.expert,
                  "probe_used": choice.probed,
                  "probe_recommended": codec.reads_probe(req.block_size),
                  "model_version": net.version if choice.expert == "net" else None,
                  "source": choice.source}
        self._done("compression", answer["source"], started)
        return answer

    def codec_policy(self, later: Callable[[Callable[[], Any]], Any] | None = None
                     ) -> CodecPolicyAnswer:
        """The codec cost model's decisions, compiled (:meth:`CodecCostModel.policy
        <pakit_stream.learners.codec.CodecCostModel.policy>`): what a node applies locally
        instead of asking per block. Pooled over nodes (no node's own costs); before any data,
        and with k-anonymity on until k nodes reported, the fixed rule (no rules).

        Compiling takes tens of ms, so it is done again only once the policy is older than
        ``POLICY_TTL_S``; a server passes ``later`` (its loop's ``call_soon``) to answer with
        the stale one and compile after, so that no request waits for it."""
        started = time.perf_counter()
        kept = self._policy or self.compile_policy()
        if started - kept[0] > POLICY_TTL_S:
            if later is None:
                kept = self.compile_policy()
            else:
                later(self.compile_policy)
        self._done("codec_policy", kept[1]["source"], started)
        return kept[1]

    def compile_policy(self) -> tuple[float, CodecPolicyAnswer]:
        """Compile the codec policy now (tens of ms) and keep it for ``POLICY_TTL_S``."""
        if self._few("codec") or not self.pipeline.codec.n_updates:
            policy, source = CodecPolicy.fallback(), "fallback"
        else:
            policy, source = self.pipeline.codec.policy(), "learned"
        self._policy = (time.perf_counter(), {**policy.as_dict(), "source": source})
        return self._policy

    def prefetch(self, body: bytes) -> PrefetchHint:
        """``{node_id, recent_accesses, k, cache_blocks, object_id?, chunk_index?}`` →
        ``{blocks, positions, proposals, threshold, model_version, source}``: the prefetch
        learner's most confident proposals after the node's last read (after ``(object_id,
        chunk_index)`` when the node gives the position it reads now: its telemetry arrives
        later than its question) (:class:`~pakit_stream.learners.prefetch.Prefetcher`; for a
        node it has not seen, the successors of the last of ``recent_accesses``). With
        ``cache_blocks`` (the node's LRU cache size in blocks), the confidence threshold is what a
        prefetch costs that cache, learned from the node's reads (``threshold``). ``blocks`` are the proposals whose
        hash is known; ``positions`` the ``(object_id, chunk_index)`` of the others, which
        the node resolves in its own DAG. Nothing confident enough: empty lists, ``fallback``."""
        started = time.perf_counter()
        req = self._parse("prefetch", body, PrefetchHintRequest)
        prefetcher = self.pipeline.prefetcher
        net = self._arm(PREFETCH_MODEL, req.node_id) or prefetcher.net
        crowds, cache = self.pipeline.crowds, req.cache_blocks
        if crowds is not None:
            cache = None  # the named node's cache profile is its own
        position = None if req.object_id is None else (req.object_id, req.chunk_index)
        picks = prefetcher.predict({"node_id": req.node_id, "k": req.k,
                                    "recent_accesses": req.recent_accesses,
                                    "cache_blocks": cache, "net": net, "position": position})
        if crowds is not None:
            picks = self._anonymous(picks, crowds)
        answer = {"blocks": [p.block_hash for p in picks if p.block_hash],
                  "positions": [{"object_id": p.object_id, "chunk_index": p.chunk_index}
                                for p in picks if not p.block_hash],
                  "proposals": [p.as_dict() for p in picks],
                  "threshold": round(prefetcher.threshold(req.node_id, cache), 6),
                  "source": "learned" if picks else "fallback",
                  "model_version": net.version if any(p.source == "net" for p in picks)
                  else None}
        self._done("prefetch", answer["source"], started)
        return answer

    @staticmethod
    def _anonymous(picks: list, crowds) -> list:
        """The proposals a caller may see with k-anonymity on: none from the successor table
        (an edge between two blocks may be one node's reads, though both blocks are read by
        many), positions only in objects k nodes read, and a block's hash only when k nodes
        read it (else the proposal keeps its position alone, so that a missing proposal says
        nothing about who read a chunk)."""
        out = []
        for p in picks:
            if p.source == "successor" or p.object_id is None or not crowds.known(
                    "object", p.object_id):
                continue
            if p.block_hash is not None and not crowds.known("read", p.block_hash):
                p = Proposal(None, p.object_id, p.chunk_index, p.confidence, p.source)
            out.append(p)
        return out

    def _few(self, space: str, key: str = "-") -> bool:
        """Whether k-anonymity is on and fewer than k nodes reported ``key`` in ``space``."""
        crowds = self.pipeline.crowds
        return crowds is not None and not crowds.known(space, key)

    def _arm(self, name: str, node_id: str | None):
        """The canary's model when ``node_id`` is in a running canary's share of ``name``,
        else ``None`` (the serving version answers); both arms are counted."""
        canary = self.pipeline.canaries.get(name)
        if canary is None:
            return None
        arm = "canary" if canary.serves(node_id) else "serving"
        self.meter.canary(name, arm)
        return canary.model if arm == "canary" else None

    def health(self) -> Health:
        return {"status": "ok", **self.pipeline.stats()}
