import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pakit_stream.events import EventDecoder, TOPICS, block_minhash, estimated_jaccard
from pakit_stream.events.fastpath import FastDecoder
from pakit_stream.events.schema import EVENT_TYPES, TOPIC_OF, Envelope, wire_type

from . import events as ev

BUILDERS = {"pakit.blocks": ev.stored, "pakit.access": ev.accessed,
            "pakit.fingerprints": ev.fingerprint, "pakit.peers": ev.peer_fetch,
            "pakit.gossip": ev.gossip}


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_every_family_decodes_single_and_enveloped(topic):
    dec = EventDecoder(topic)
    one = BUILDERS[topic](1)
    single = dec.decode(ev.raw(one))
    batch = dec.decode(ev.pack([BUILDERS[topic](i) for i in range(5)]))
    assert single.rejects == [] and len(single.events) == 1
    assert batch.rejects == [] and len(batch.events) == 5
    assert msgspec.to_builtins(single.events[0]) == json.loads(json.dumps(one))


def test_topics_and_types_are_one_to_one():
    assert set(TOPIC_OF) == set(EVENT_TYPES) and len(TOPIC_OF) == len(TOPICS) == 5


def test_event_of_another_family_is_refused_on_this_topic():
    result = EventDecoder("pakit.blocks").decode(ev.raw(ev.accessed(1)))
    assert result.events == [] and "event_type" in result.rejects[0].reason


def test_missing_event_type_is_refused():
    e = ev.accessed(1)
    del e["event_type"]
    r = EventDecoder("pakit.access").decode(ev.raw(e)).rejects[0]
    assert (r.kind, r.reason) == ("invalid", "Object missing required field `event_type`")


@pytest.mark.parametrize("field,value,kind", [
    ("content", "the block", "privacy"),
    ("payload", "aGVsbG8gd29ybGQ=", "privacy"),
    ("data", [1, 2, 3], "privacy"),
    ("node_id", "x" * 65, "privacy"),
    ("block_hash", "readme.txt", "privacy"),
    ("block_hash", "AB" * 32, "privacy"),
    ("latency_ms", "fast", "invalid"),
    ("cache_hit", None, "invalid"),
    ("colour", "blue", "invalid"),
    ("object_id", "my-file.txt", "privacy"),
    ("chunk_index", -1, "invalid"),
])
def test_bad_fields_are_refused_with_a_reason(field, value, kind):
    e = ev.accessed(1)
    e[field] = value
    [r] = EventDecoder("pakit.access").decode(ev.raw(e)).rejects
    assert r.kind == kind and r.reason and r.raw == ev.raw(e)


def test_one_bad_event_costs_only_its_own_place():
    events = [ev.accessed(i) for i in range(10)]
    events[3] = {**events[3], "content": "secret"}
    events[7] = {**events[7], "latency_ms": -1}
    result = EventDecoder("pakit.access").decode(ev.pack(events))
    assert len(result.events) == 8
    assert [(r.index, r.kind) for r in result.rejects] == [(3, "privacy"), (7, "invalid")]
    assert json.loads(result.rejects[0].raw)["content"] == "secret"  # the original bytes


@pytest.mark.parametrize("value", [b"", b"\x00\xff\xfe", b"[]", b"42", b'{"events": 5}',
                                   b'{"events": [1]', b"null"])
def test_garbage_is_refused_never_raised(value):
    result = EventDecoder("pakit.gossip").decode(value)
    assert result.events == [] and len(result.rejects) == 1


def test_envelope_level_extra_field_refuses_the_whole_message():
    value = b'{"events": [], "content": "x"}'
    [r] = EventDecoder("pakit.gossip").decode(value).rejects
    assert r.kind == "privacy" and r.index is None and r.raw == value


def test_size_limits():
    dec = EventDecoder("pakit.access", max_message_bytes=10_000, max_event_bytes=400)
    big = ev.pack([ev.accessed(i) for i in range(100)])
    assert "exceeds the 10000-byte limit" in dec.decode(big).rejects[0].reason
    # every field is bounded, so only padding makes an event big: checked where events are
    # judged one by one (single messages, and envelopes that failed the fast path)
    spaced = ev.raw(ev.accessed(1)).replace(b", ", b"," + b" " * 100)
    assert "exceeds the 400-byte limit" in dec.decode(spaced).rejects[0].reason
    mixed = dec.decode(b'{"events": [' + spaced + b", " + ev.raw({"x": 1}) + b"]}")
    assert [r.index for r in mixed.rejects] == [0, 1] and "400-byte" in mixed.rejects[0].reason


def test_peer_must_be_a_candidate():
    e = dict(ev.peer_fetch(1), peer_id="someone-else")
    assert "candidates" in EventDecoder("pakit.peers").decode(ev.raw(e)).rejects[0].reason


def test_minhash_is_deterministic_and_tracks_similarity():
    base = bytes(range(256)) * 200
    assert block_minhash(base) == block_minhash(bytes(base))
    edited = base[:20000] + b"x" * 500 + base[20500:]
    other = bytes(reversed(base)) + b"tail"
    assert estimated_jaccard(block_minhash(base), block_minhash(edited)) > 0.7
    assert estimated_jaccard(block_minhash(base), block_minhash(other)) < 0.3
    assert block_minhash(b"") and len(block_minhash(b"abc")) == 128


def test_read_positions_are_optional_and_come_together():
    dec = EventDecoder("pakit.access")
    old = dec.decode(ev.raw(ev.accessed(3))).events[0]  # a producer without positions
    assert old.object_id is None and old.chunk_index is None and old.chunk_count == 1
    new = dec.decode(ev.raw({**ev.accessed(3, position=True), "chunk_count": 8})).events[0]
    assert (new.object_id, new.chunk_index, new.chunk_count) == ("0f" * 32, 3, 8)
    half = {**ev.accessed(3), "chunk_index": 3}  # an index without its object names nothing
    [r] = dec.decode(ev.raw(half)).rejects
    assert "come together" in r.reason


def test_gossip_mode_and_control_messages_are_optional():
    dec = EventDecoder("pakit.gossip")
    old = dec.decode(ev.raw(ev.gossip(2))).events[0]  # a producer that only pushes
    assert (old.mode, old.pull_rounds, old.control_messages) == ("push", 0, 0)
    pulled = {**ev.gossip(2), "mode": "push-pull", "fanout": 1.5, "pull_rounds": 4,
              "control_messages": 800}
    e = dec.decode(ev.raw(pulled)).events[0]
    assert (e.mode, e.fanout, e.pull_rounds, e.control_messages) == ("push-pull", 1.5, 4, 800)
    [r] = dec.decode(ev.raw({**pulled, "mode": "flood"})).rejects
    assert r.kind == "invalid" and "mode" in r.reason


def test_the_json_schema_in_docs_is_the_one_the_structs_give():
    """docs/events.schema.json is what nodes in other languages validate against; it must
    change whenever the structs do (regenerate: python -m pakit_stream.events.schema)."""
    import json
    from pathlib import Path

    from pakit_stream.events.schema import EVENT_TYPES, contract_schema

    path = Path(__file__).resolve().parent.parent / "docs" / "events.schema.json"
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(contract_schema()))
    defs = written["$defs"]
    for tag, cls in EVENT_TYPES.items():
        name = cls.__name__
        assert defs[name]["properties"]["event_type"]["enum"] == [tag]
        assert f"Envelope_{name}_" in defs


# -- the envelope fast path: patterns checked once per envelope -------------------------------

#: characters either side of every pattern's classes: hex, upper case, the identifier
#: punctuation, and what no id may hold (space, newline, a slash, a non-ASCII letter)
_EDGES = "0123456789abcdefABXYZ_-.:@ \n/é"


def _strings_replaced(value, draw, chance):
    """``value`` with some strings (and dict keys) replaced by drawn text."""
    text = st.text(alphabet=_EDGES, max_size=70) | st.sampled_from(["", "a" * 64 + "\n", "x\ny"])
    if isinstance(value, str):
        return draw(text) if draw(st.floats(0, 1)) < chance else value
    if isinstance(value, list):
        return [_strings_replaced(v, draw, chance) for v in value]
    if isinstance(value, dict):
        return {(_strings_replaced(k, draw, chance) if k not in ("event_type",) else k):
                _strings_replaced(v, draw, chance) for k, v in value.items()}
    return value


@st.composite
def envelopes_with_odd_strings(draw):
    topic = draw(st.sampled_from(sorted(BUILDERS)))
    chance = draw(st.sampled_from([0.0, 0.02, 0.2]))
    events = [_strings_replaced(BUILDERS[topic](draw(st.integers(0, 500))), draw, chance)
              for _ in range(draw(st.integers(1, 8)))]
    if draw(st.integers(0, 9)) == 0:  # a field the contract does not know
        events[-1][draw(st.sampled_from(["content", "colour"]))] = "x"
    raw = [json.dumps(e) for e in events]
    doubled = draw(st.integers(0, 4)) == 0
    if doubled:  # a key given twice: msgspec keeps the last value
        i = draw(st.integers(0, len(raw) - 1))
        key = draw(st.sampled_from(sorted(events[i])))
        earlier = _strings_replaced(events[i][key], draw, 1.0)
        raw[i] = "{" + json.dumps(key) + ": " + json.dumps(earlier) + ", " + raw[i][1:]
    return topic, ('{"events": [' + ", ".join(raw) + "]}").encode(), doubled


@settings(max_examples=1500, deadline=None)
@given(envelopes_with_odd_strings())
def test_the_fast_path_accepts_exactly_what_the_contract_does(message):
    """The fast path (patterns checked once per envelope) either returns the events the
    contract's strict types decode, or declines; it never accepts an envelope they refuse."""
    topic, value, doubled = message
    strict = msgspec.json.Decoder(Envelope[wire_type(TOPICS[topic])])
    fast = FastDecoder(TOPICS[topic]).decode(value)
    try:
        expected = strict.decode(value).events
    except msgspec.ValidationError:
        assert fast is None
        return
    # declined only for a key given twice or an escape (json.dumps escapes newlines, non-ASCII)
    assert fast is not None or doubled or b"\\" in value
    if fast is not None:
        assert msgspec.to_builtins(fast) == msgspec.to_builtins(expected)
        assert [type(e).__mro__[1] for e in fast] == [type(e) for e in expected]


@pytest.mark.parametrize("twice", [
    b'"block_hash": "' + b"Z" * 300 + b'", ',  # an earlier value the last one would hide
    b'"node_id": "bad id!", ',
    b'"node_id": "n1", ',  # the same value twice: strict accepts it, the fast path declines
])
def test_a_key_given_twice_is_judged_by_the_strict_types(twice):
    """msgspec keeps the last of a repeated key; the strict types check every one, so the fast
    path declines an envelope with more keys than its events hold."""
    events = [ev.peer_fetch(i) for i in range(3)]
    raw = b'{"events": [' + b", ".join(json.dumps(e).encode() for e in events) + b"]}"
    doubled = raw.replace(b'{"event_type"', b"{" + twice + b'"event_type"', 1)
    topic = "pakit.peers"
    assert FastDecoder(TOPICS[topic]).decode(doubled) is None
    strict = msgspec.json.Decoder(Envelope[wire_type(TOPICS[topic])])
    result = EventDecoder(topic).decode(doubled)
    try:
        expected = strict.decode(doubled).events
    except msgspec.ValidationError:
        assert result.rejects and result.rejects[0].index == 0 and len(result.events) == 2
    else:
        assert msgspec.to_builtins(result.events) == msgspec.to_builtins(expected)
    twice_envelope = b'{"events": [' + json.dumps(ev.peer_fetch(9)).encode() + b"], " + raw[1:]
    assert FastDecoder(TOPICS[topic]).decode(twice_envelope) is None


def test_escapes_and_keys_given_their_default_take_the_strict_path():
    """A backslash could spell a key or a colon; a key given with its default value is not
    counted. Both are declined by the fast path and accepted by the strict types."""
    escaped = json.dumps(ev.gossip(1)).replace('"node-a"', '"node-\\u0061"')
    assert "\\u0061" in escaped
    for topic, event in (("pakit.access", json.dumps({**ev.accessed(1), "chunk_count": 1})),
                         ("pakit.gossip", escaped)):
        raw = b'{"events": [' + event.encode() + b"]}"
        assert FastDecoder(TOPICS[topic]).decode(raw) is None
        result = EventDecoder(topic).decode(raw)
        assert result.rejects == [] and [e.node_id for e in result.events] == ["node-a"]


def test_the_lenient_structs_keep_the_contracts_configuration():
    """Unknown fields stay forbidden, events frozen and tagged: only the patterns go."""
    from pakit_stream.events.fastpath import _Lenient
    from pakit_stream.events.schema import CodecResult

    for cls in [*TOPICS.values(), CodecResult]:
        lenient = _Lenient().struct(cls)
        config, kept = cls.__struct_config__, lenient.__struct_config__
        assert issubclass(lenient, cls) and lenient.__struct_fields__ == cls.__struct_fields__
        assert all(getattr(kept, k) == getattr(config, k) for k in (
            "forbid_unknown_fields", "frozen", "tag", "tag_field", "omit_defaults"))


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_a_refused_string_gets_the_contracts_reason(topic):
    """An envelope the fast path declines is judged by the strict types: the same reason,
    for the same event, as without the fast path."""
    events = [BUILDERS[topic](i) for i in range(4)]
    events[2]["node_id"] = "node a"  # a space: no identifier pattern allows it
    result = EventDecoder(topic).decode(ev.pack(events))
    assert len(result.events) == 3
    [r] = result.rejects
    assert r.index == 2 and r.kind == "invalid" and "matching regex" in r.reason


def test_a_pattern_the_fast_path_cannot_join_is_refused_when_it_is_built():
    from typing import Annotated

    from msgspec import Meta, Struct

    from pakit_stream.exceptions import PakitStreamError

    class Odd(Struct, tag="odd", tag_field="event_type"):
        name: Annotated[str, Meta(pattern=r"^(ab|c)+$")]

    with pytest.raises(PakitStreamError, match="cannot check"):
        FastDecoder(Odd)
