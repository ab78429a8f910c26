"""The event contract: five event families, one Kafka topic each (see docs/events.md).

Every event is a msgspec ``Struct`` that refuses unknown fields, so a field that could carry
block content (``content``, ``data``, ``payload``...) never gets past decoding; every string is
length- and pattern-bounded, and block ids must be 64-character hex digests.

>>> import msgspec
>>> raw = b'{"event_type": "block_accessed", "node_id": "n1", "ts": 1.5,'
>>> raw += b' "block_hash": "' + b"ab" * 32 + b'", "cache_hit": false, "latency_ms": 3.0}'
>>> msgspec.json.decode(raw, type=BlockAccessed).latency_ms
3.0
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from pakit_stream.exceptions import InvalidEventError

__all__ = [
    "Event",
    "BlockStored",
    "CodecResult",
    "BlockAccessed",
    "BlockFingerprint",
    "PeerFetch",
    "GossipRound",
    "Envelope",
    "RawEnvelope",
    "TOPICS",
    "EVENT_TYPES",
    "TOPIC_OF",
    "DLQ_TOPIC",
    "MINHASH_PERM",
    "MAX_ENVELOPE_EVENTS",
    "PEER_CONTEXT_KEYS",
    "check_peer_context",
    "wire_type",
]

MINHASH_PERM = 128
MAX_ENVELOPE_EVENTS = 10_000  # hints wait at most one message: this bounds that wait
DLQ_TOPIC = "pakit.dlq"
MODELS_TOPIC = "pakit.models"  # serving batch-model versions, published by the leader

BlockHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Identifier = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")]
CodecName = Annotated[str, Meta(min_length=1, max_length=16, pattern=r"^[a-z0-9_-]+$")]
ContextKey = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z_][a-z0-9_]*$")]
Timestamp = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Millis = Annotated[float, Meta(ge=0, le=86_400_000)]
Bytes = Annotated[int, Meta(ge=0, le=1 << 40)]
Count = Annotated[int, Meta(ge=0, le=1 << 40)]
Hop = Annotated[int, Meta(ge=1, le=1024)]
Hash32 = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]
ChunkIndex = Annotated[int, Meta(ge=0, le=1 << 48)]


class Event(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, gc=False,
            tag_field="event_type"):
    """Fields every event has."""

    node_id: Identifier
    ts: Timestamp


class CodecResult(Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """How one codec did on a block, as measured by the node."""

    algorithm: CodecName
    compressed_size: Bytes
    compress_us: Annotated[float, Meta(ge=0)]
    decompress_us: Annotated[float, Meta(ge=0)]


class BlockStored(Event, tag="block_stored"):
    """A node stored a block (topic ``pakit.blocks``)."""

    block_hash: BlockHash
    block_size: Bytes
    block_depth: Annotated[int, Meta(ge=0, le=1_000_000)]
    compression_algorithm: CodecName
    compression_ratio: Annotated[float, Meta(gt=0, le=1000)]
    parent_count: Count | None = None
    entropy: Annotated[float, Meta(ge=0, le=8)] | None = None
    probe_ratio: Annotated[float, Meta(gt=0, le=16)] | None = None
    codec_results: Annotated[list[CodecResult], Meta(max_length=16)] | None = None


class BlockAccessed(Event, tag="block_accessed"):
    """A node read a block (topic ``pakit.access``).

    ``object_id`` (the digest of the file or DAG root the block belongs to), ``chunk_index``
    (its position there) and ``chunk_count`` (how many consecutive chunks the read covered) are
    optional, and come together: positions, never content.
    """

    block_hash: BlockHash
    cache_hit: bool
    latency_ms: Millis
    object_id: BlockHash | None = None
    chunk_index: ChunkIndex | None = None
    chunk_count: Annotated[int, Meta(ge=1, le=1 << 20)] = 1

    def __post_init__(self):
        if (self.object_id is None) != (self.chunk_index is None):
            raise ValueError("object_id and chunk_index come together")


class BlockFingerprint(Event, tag="block_fingerprint"):
    """A MinHash of a block's content shingles (topic ``pakit.fingerprints``).

    Computed on the node by :func:`pakit_stream.events.block_minhash`; content never leaves it.
    """

    block_hash: BlockHash
    minhash: Annotated[list[Hash32], Meta(min_length=MINHASH_PERM, max_length=MINHASH_PERM)]


class PeerFetch(Event, tag="peer_fetch"):
    """A node fetched a block from a peer (topic ``pakit.peers``)."""

    block_hash: BlockHash
    peer_id: Identifier
    candidates: Annotated[list[Identifier], Meta(min_length=1, max_length=256)]
    success: bool
    latency_ms: Millis
    block_size: Bytes
    context: Annotated[dict[ContextKey, float], Meta(max_length=16)] = {}

    def __post_init__(self):
        if self.peer_id not in self.candidates:
            raise ValueError("peer_id must be one of candidates")
        check_peer_context(self.context)


class GossipRound(Event, tag="gossip_round"):
    """One gossip broadcast and what it reached (topic ``pakit.gossip``)."""

    network_size: Annotated[int, Meta(ge=1, le=10_000_000)]
    avg_latency_ms: Millis
    message_loss_rate: Fraction
    fanout: Annotated[float, Meta(ge=0, le=1024)]
    ttl: Hop
    coverage: Fraction
    messages_sent: Count
    mode: Literal["push", "push-pull"] = "push"
    pull_rounds: Annotated[int, Meta(ge=0, le=1024)] = 0
    control_messages: Count = 0


class _Untyped(Event, tag="__untyped__"):
    """Never valid. In a union beside a real family it makes msgspec require ``event_type``
    (a lone tagged struct would accept events without it)."""

    def __post_init__(self):
        raise ValueError("event_type '__untyped__' is reserved")


#: the context features a peer fetch or a peer hint may carry; anything else is refused
PEER_CONTEXT_KEYS = ("time_of_day", "network_load", "block_size_log")


def check_peer_context(context) -> None:
    """Raise :class:`~pakit_stream.exceptions.InvalidEventError` (a ``ValueError``) naming the
    first context key outside :data:`PEER_CONTEXT_KEYS` (the peer learner's features are
    fixed, so that no event can grow its state)."""
    for key in context or ():
        if key not in PEER_CONTEXT_KEYS:
            raise InvalidEventError(f"context key {key!r} is not one of "
                                    f"{', '.join(PEER_CONTEXT_KEYS)}")


E = TypeVar("E")


class Envelope(Struct, Generic[E], frozen=True, forbid_unknown_fields=True, gc=False):
    """Many events of one family in one Kafka message: the fast path."""

    events: Annotated[list[E], Meta(max_length=MAX_ENVELOPE_EVENTS)]


class RawEnvelope(Struct, frozen=True, gc=False):
    """An envelope whose events are kept undecoded, to judge them one by one."""

    events: Annotated[list[msgspec.Raw], Meta(max_length=MAX_ENVELOPE_EVENTS)] | None = None


TOPICS: dict[str, type[Event]] = {
    "pakit.blocks": BlockStored,
    "pakit.access": BlockAccessed,
    "pakit.fingerprints": BlockFingerprint,
    "pakit.peers": PeerFetch,
    "pakit.gossip": GossipRound,
}

def wire_type(event_type: type[Event]):
    """The type to decode one event of ``event_type`` with: ``event_type`` required."""
    return event_type | _Untyped


EVENT_TYPES: dict[str, type[Event]] = {cls.__struct_config__.tag: cls for cls in TOPICS.values()}
TOPIC_OF: dict[str, str] = {cls.__struct_config__.tag: topic for topic, cls in TOPICS.items()}


def contract_schema() -> dict[str, Any]:
    """The contract as a JSON Schema (draft 2020-12), generated from the structs above: one
    event of a family, or an envelope of one family's events. ``docs/events.schema.json`` is
    this, written by ``python -m pakit_stream.events.schema``; a test keeps the two equal."""
    families = list(TOPICS.values())
    kinds = [*families, *(Envelope[cls] for cls in families)]
    schemas, components = msgspec.json.schema_components(kinds, ref_template="#/$defs/{name}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "pakit-stream telemetry",
            "description": "One Kafka message: a single event, or {\"events\": [...]} of one "
                           "family. Topics: " + ", ".join(f"{t} ({c.__struct_config__.tag})"
                                                          for t, c in TOPICS.items()) + ".",
            "oneOf": schemas, "$defs": components}


if __name__ == "__main__":
    import json
    import sys

    sys.stdout.write(json.dumps(contract_schema(), indent=2, sort_keys=True) + "\n")
