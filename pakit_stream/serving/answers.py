"""What the HTTP API answers, as types: the hint service returns these dicts, and
:mod:`pakit_stream.serving.api` turns them into the OpenAPI document's schemas."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = ["Source", "PeerHint", "NetworkHint", "Similar", "SimilarHint", "CompressionHint",
           "Position", "Proposal", "PrefetchHint", "Health", "RetrainOutcome", "Rollback",
           "Error"]

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
