"""Bytes from Kafka → validated events, and a reason for everything refused.

A message value is one event (a JSON object) or an envelope ``{"events": [...]}``. The fast path
decodes a whole envelope in one msgspec call, its string patterns checked once for the whole
envelope (:mod:`pakit_stream.events.fastpath`); an envelope it cannot vouch for is decoded again
with the contract's strict types, and only when that fails is it re-read event by event, so that
one bad event costs its own place in the dead-letter topic and nothing more.
Every field of an event is bounded, so ``max_event_bytes`` can only catch padding; it is checked
where events are judged one by one (single-event messages and the slow path).

>>> dec = EventDecoder("pakit.gossip")
>>> ok = (b'{"event_type": "gossip_round", "node_id": "n1", "ts": 0, "network_size": 50,'
...       b' "avg_latency_ms": 20, "message_loss_rate": 0.01, "fanout": 6, "ttl": 10,'
...       b' "coverage": 1.0, "messages_sent": 300}')
>>> bad = b'{"event_type": "gossip_round", "node_id": "n1", "ts": 0, "payload": "aGk="}'
>>> result = dec.decode(b'{"events": [' + ok + b',' + bad + b']}')
>>> len(result.events), result.rejects[0].kind, result.rejects[0].reason
(1, 'privacy', 'field `payload` could carry block content')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import msgspec

from pakit_stream.events.fastpath import FastDecoder
from pakit_stream.events.schema import TOPICS, Envelope, Event, RawEnvelope, wire_type

__all__ = ["EventDecoder", "Decoded", "Rejected", "classify_error", "CONTENT_FIELDS"]

#: Field names that name content rather than describe it; events carrying them are refused.
CONTENT_FIELDS = frozenset(
    {"content", "contents", "data", "payload", "body", "raw", "bytes", "blob", "text",
     "value", "chunk", "block", "block_data", "sample", "base64", "b64", "file", "filename",
     "path", "name"}
)

_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_TOO_LONG_STR = re.compile(r"Expected `str` of length <= \d+")
_BAD_HASH = re.compile(r"Expected `str` (?:matching regex|of length) .* "
                       r"- at `\$(?:\.events\[\d+\])?\.(?:block_hash|object_id)`$")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message, or one event of an envelope, that was refused.

    ``raw`` is exactly the refused bytes; ``index`` is the event's place in its envelope
    (``None`` when the whole message was refused); ``kind`` is ``invalid`` or ``privacy``.
    """

    raw: bytes
    reason: str
    kind: str
    index: int | None = None


@dataclass(slots=True)
class Decoded:
    events: list[Event] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)


def classify_error(message: str) -> tuple[str, str]:
    """Turn a msgspec error message into ``(kind, reason)``.

    >>> classify_error("Object contains unknown field `content` - at `$`")
    ('privacy', 'field `content` could carry block content - at `$`')
    >>> classify_error("Expected `int`, got `str` - at `$.fanout`")
    ('invalid', 'Expected `int`, got `str` - at `$.fanout`')
    """
    m = _UNKNOWN.search(message)
    if m:
        name = m.group(1)
        where = message[m.end():]
        if name.lower() in CONTENT_FIELDS or len(name) > 64:
            return "privacy", f"field `{name[:64]}` could carry block content{where}"
        return "invalid", f"unknown field `{name}`{where}"
    if _BAD_HASH.search(message):
        return "privacy", f"block ids must be 64-char lowercase hex digests: {message}"
    if _TOO_LONG_STR.search(message):
        return "privacy", f"over-long string could carry block content: {message}"
    return "invalid", message


class EventDecoder:
    """Decodes the messages of one topic; never raises on bad input."""

    def __init__(self, topic: str, *, max_message_bytes: int = 8 << 20,
                 max_event_bytes: int = 64 << 10) -> None:
        self.topic = topic
        self.event_type = TOPICS[topic]
        self.max_message_bytes = max_message_bytes
        self.max_event_bytes = max_event_bytes
        self._envelope = msgspec.json.Decoder(Envelope[wire_type(self.event_type)])
        self._raw_envelope = msgspec.json.Decoder(RawEnvelope)
        self._one = msgspec.json.Decoder(wire_type(self.event_type))
        self._fast = FastDecoder(self.event_type)

    def decode(self, value: bytes | None) -> Decoded:
        if not value:
            return Decoded(rejects=[Rejected(value or b"", "empty message", "invalid")])
        if len(value) > self.max_message_bytes:
            reason = f"message of {len(value)} bytes exceeds the {self.max_message_bytes}-byte limit"
            return Decoded(rejects=[Rejected(value, reason, "invalid")])
        events = self._fast.decode(value)
        if events is not None:
            return Decoded(events=events)
        try:  # not known valid: the strict types say why
            return Decoded(events=self._envelope.decode(value).events)
        except msgspec.MsgspecError as exc:
            envelope_error = str(exc)
        return self._slow_path(value, envelope_error)

    def _slow_path(self, value: bytes, envelope_error: str) -> Decoded:
        try:
            probe = self._raw_envelope.decode(value)
        except msgspec.ValidationError as exc:  # valid JSON, wrong shape
            kind, reason = classify_error(str(exc))
            return Decoded(rejects=[Rejected(value, reason, kind)])
        except msgspec.DecodeError as exc:
            return Decoded(rejects=[Rejected(value, f"malformed JSON: {exc}", "invalid")])
        if probe.events is None:  # a single event, the way foreign producers send them
            one = self._decode_one(value, None)
            return Decoded(events=[one]) if isinstance(one, Event) else Decoded(rejects=[one])
        out = Decoded()
        for i, raw in enumerate(probe.events):
            one = self._decode_one(bytes(raw), i)
            (out.events if isinstance(one, Event) else out.rejects).append(one)
        if not out.rejects:
            # Every event was fine, so the envelope itself is at fault (an extra top-level key).
            kind, reason = classify_error(envelope_error)
            return Decoded(rejects=[Rejected(value, f"envelope: {reason}", kind)])
        return out

    def _decode_one(self, raw: bytes, index: int | None) -> Event | Rejected:
        if len(raw) > self.max_event_bytes:
            reason = f"event of {len(raw)} bytes exceeds the {self.max_event_bytes}-byte limit"
            return Rejected(raw, reason, "invalid", index)
        try:
            return self._one.decode(raw)
        except msgspec.MsgspecError as exc:
            kind, reason = classify_error(str(exc))
            return Rejected(raw, reason, kind, index)

