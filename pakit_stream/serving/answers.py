"""What the HTTP API answers, as types: the hint service returns these dicts, and
:mod:`pakit_stream.serving.api` turns them into the OpenAPI document's schemas."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = ["Source", "PeerHint", "NetworkHint", "Similar", "SimilarHint", "CompressionHint",
           "Position", "Proposal", "PrefetchHint", "CodecDecision", "CodecRule",
           "CodecPolicyAnswer", "Health", "RetrainOutcome", "Rollback", "Error"]

Source = Literal["learned", "explore", "fallback"]


class PeerHint(TypedDict):
    """The peer to fetch from; ``score``: its expected latency (ms) for that node."""

    peer_id: str
    source: Source
    score: float | None


class NetworkHint(TypedDict):
    """A gossip setting; ``fanout`` may be fractional (5.5: five, and a sixth half the time).
    The ``expected_*`` figures are null before any data and with differential privacy on."""

    mode: Literal["push", "push-pull"]
    fanout: float
    ttl: int
    pull_rounds: int
    source: Source
    expected_coverage: float | None
    expected_payload_per_node: float | None
    expected_control_per_node: float | None


class Similar(TypedDict):
    block_hash: str
    jaccard: float


class SimilarHint(TypedDict):
    """Indexed blocks whose estimated Jaccard reaches ``min_jaccard``, best first."""

    block_hash: str
    similar: list[Similar]
    source: Source


class CompressionHint(TypedDict):
    """The leading rule's codec for blocks of that size; ``probe_recommended``: send
    ``probe_ratio`` for such blocks."""

    algorithm: str
    expert: str
    probe_used: bool
    probe_recommended: bool
    model_version: str | None
    source: Source


class CodecDecision(TypedDict):
    """One line of a rule's table: the buckets of the features the rule reads (the recent
    and/or probe lz4 ratio, each ``int(ratio / 0.05)``, ``-1`` unknown; ``[]`` for a rule that
    reads none); ``"noprobe"``: the codec for a block without its probe; ``"other"``: for
    buckets the table lacks."""

    key: list[int] | Literal["noprobe", "other"]
    codec: str


class CodecRule(TypedDict):
    """The rule for blocks of one half-octave size bucket, ``round(2 * log2(size))``: the
    leading expert (``fixed:CODEC``, ``size``, ``recent``, ``probe``, ``recent+probe``) and its
    decisions. A size without a rule uses the nearest bucket's."""

    size_bucket: int
    expert: str
    table: list[CodecDecision]


class CodecPolicyAnswer(TypedDict):
    """The codec decisions compiled for nodes to apply locally (a dict lookup per block, plus
    the probe where the rule reads it): ``pakit_stream.learners.codec.CodecPolicy.from_dict``
    rebuilds it. ``default``: the codec where no rule applies (null: zstd-3 above 100 kB,
    else lz4); ``version``: the learner's update count when it was compiled."""

    version: int
    default: str | None
    rules: list[CodecRule]
    source: Source


class Position(TypedDict):
    object_id: str | None
    chunk_index: int | None


class Proposal(TypedDict):
    block_hash: str | None
    object_id: str | None
    chunk_index: int | None
    confidence: float
    source: Literal["next", "stride", "successor", "net"]


class PrefetchHint(TypedDict):
    """Blocks to prefetch by hash, or by position for the node to resolve in its DAG."""

    blocks: list[str]
    positions: list[Position]
    proposals: list[Proposal]
    threshold: float
    model_version: str | None
    source: Source


class Health(TypedDict):
    """Events applied per topic, offsets, learner sizes, online quality and canaries."""

    status: Literal["ok"]
    applied: dict[str, int]
    offsets: dict[str, int]
    learners: dict[str, Any]
    quality: dict[str, float | None]
    canaries: dict[str, Any]


class RetrainOutcome(TypedDict):
    """A retrain's or a gate's verdict, with the gate's figures when it ran."""

    outcome: Literal["accepted", "rejected", "failed", "skipped"]
    reason: NotRequired[str]


class Rollback(TypedDict):
    name: str
    serving: str | None


class Error(TypedDict):
    """Why a request was refused."""

    error: str
