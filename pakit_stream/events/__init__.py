"""Events: the contract (``schema``), decoding with reasons (``decode``), node-side MinHash."""

from pakit_stream.events.decode import Decoded, EventDecoder, Rejected, classify_error
from pakit_stream.events.fingerprint import block_minhash, estimated_jaccard
from pakit_stream.events.schema import (
    DLQ_TOPIC,
    EVENT_TYPES,
    TOPIC_OF,
    TOPICS,
    BlockAccessed,
    BlockFingerprint,
    BlockStored,
    CodecResult,
    Envelope,
    Event,
    GossipRound,
    PeerFetch,
)

__all__ = [
    "BlockAccessed", "BlockFingerprint", "BlockStored", "CodecResult", "Decoded", "DLQ_TOPIC",
    "Envelope", "Event", "EventDecoder", "EVENT_TYPES", "GossipRound", "PeerFetch", "Rejected",
    "TOPIC_OF", "TOPICS", "block_minhash", "classify_error", "estimated_jaccard",
]
