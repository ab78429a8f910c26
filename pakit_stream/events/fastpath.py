"""The envelope fast path: each string pattern of the contract checked once per envelope.

msgspec checks a string bounded by ``Meta(pattern=...)`` by calling Python's ``re`` on it,
about 0.45 µs a string: most of the cost of decoding a peer fetch (node, block, peer and
candidate ids) or a stored block (codec names). :class:`FastDecoder` decodes an envelope with
*lenient* types instead: subclasses of the contract's structs whose strings keep every bound
but their pattern. It then checks all the strings each pattern bounds in one regular
expression over the envelope's strings joined by newlines.

The decoder says only "valid" or "not known valid": an envelope it cannot vouch for goes to
the strict decoder, so what is accepted and the reasons given for what is refused are the
contract's own. The join is exact for patterns made of positive character classes that
exclude the newline, anchored at both ends (all of the contract's); a pattern of another shape
is refused when the decoder is built.

A key repeated within one object is the other way a string could escape the check: msgspec
keeps the last value, and the strict types check every one. So the fast path declines an
envelope with a backslash (an escape could spell a key or a colon), and one whose colons are
more than its keys and the colons inside its checked strings: every key is followed by one
colon, and the keys are counted from the decoded events (an optional key present with its
default value is not counted, so such an envelope is declined too). Every string of the
contract is pattern-checked or a constant (tags, literals) without a colon; a string field of
another kind is refused when the decoder is built.

Decoded events are instances of the lenient subclasses: ``isinstance`` against the contract's
structs holds, ``type(e) is PeerFetch`` and equality with a strict twin do not (pickled, they
become the contract's structs).

>>> from pakit_stream.events.schema import PeerFetch
>>> fast = FastDecoder(PeerFetch)
>>> ok = (b'{"events": [{"event_type": "peer_fetch", "node_id": "n1", "ts": 0,'
...       b' "block_hash": "' + b"ab" * 32 + b'", "peer_id": "p1", "candidates": ["p1"],'
...       b' "success": true, "latency_ms": 3, "block_size": 10}]}')
>>> [isinstance(e, PeerFetch) for e in fast.decode(ok)]
[True]
>>> fast.decode(ok.replace(b'"p1"', b'"p 1"')) is None
True
"""

from __future__ import annotations

import functools
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from pakit_stream.exceptions import PakitStreamError

__all__ = ["FastDecoder"]

#: a pattern the joined check is exact for: positive character classes (no escapes, no
#: negation), each once or repeated, anchored at both ends
_CHECKABLE = re.compile(r"\^(?:\[[^\]\\^][^\]\\]*\](?:[+*]|\{\d+(?:,\d*)?\})?)+\$")
_CLASS = re.compile(r"\[[^\]]*\]")
_META_BOUNDS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "tz")
_present = functools.partial(operator.is_not, None)
_COLON = ord(":")

#: how to reach strings from a list of events: ``("attr", name)``, ``("items",)`` (a list's
#: items or a dict's keys), ``("values",)`` (a dict's values)
Step = tuple


def _joined_check(pattern: str) -> re.Pattern:
    """``(?:core\\n)*`` for the pattern ``^core$``: it matches ``"\\n".join(items) + "\\n"``
    exactly when every item (none holding a newline) matches the pattern."""
    if not _CHECKABLE.fullmatch(pattern) or any(
            re.fullmatch(cls, "\n") for cls in _CLASS.findall(pattern)):
        raise PakitStreamError(f"the envelope fast path cannot check the pattern {pattern!r} "
                               "once per envelope: use character classes without the newline")
    return re.compile(f"(?:{pattern[1:-1]}\n)*")


class _Lenient:
    """Builds the lenient twin of a contract type, collecting each dropped pattern with the
    steps that reach its strings from a list of events, and the steps that reach its structs
    and dicts (whose keys the colon count needs)."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, tuple[Step, ...]]] = []
        self.structs: list[tuple[type, tuple[Step, ...]]] = []
        self.dicts: list[tuple[Step, ...]] = []

    def type(self, tp: Any, steps: tuple[Step, ...], checked: bool = False) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            inner, metas = args[0], list(args[1:])
            for i, meta in enumerate(metas):
                if isinstance(meta, Meta) and meta.pattern is not None:
                    self.checks.append((meta.pattern, steps))
                    metas[i] = Meta(**{k: getattr(meta, k) for k in _META_BOUNDS
                                       if getattr(meta, k) is not None})
                    checked = True
            return Annotated[(self.type(inner, steps, checked), *metas)]
        if tp is str and not checked:
            raise PakitStreamError("the envelope fast path cannot count the colons of a string "
                                   f"without a pattern (at {steps})")
        if origin is typing.Literal and any(":" in str(a) for a in args):
            raise PakitStreamError(f"the envelope fast path cannot count the colons of {tp}")
        if origin in (typing.Union, types.UnionType):
            # None is not a string: the steps drop it before they go on
            return functools.reduce(operator.or_, (self.type(a, steps) for a in args))
        if origin is list:
            return list[self.type(args[0], (*steps, ("items",)))]
        if origin is dict:
            self.dicts.append(steps)
            return dict[self.type(args[0], (*steps, ("items",))),
                        self.type(args[1], (*steps, ("values",)))]
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            return self.struct(tp, steps)
        return tp

    def struct(self, cls: type, steps: tuple[Step, ...] = ()) -> type:
        if ":" in str(cls.__struct_config__.tag or ""):
            raise PakitStreamError(f"the envelope fast path cannot count the colons of {cls}'s tag")
        self.structs.append((cls, steps))
        fields = []
        for f in msgspec.structs.fields(cls):
            lenient = self.type(f.type, (*steps, ("attr", f.name)))
            if lenient == f.type:
                continue  # inherited as it is
            if f.default is not msgspec.NODEFAULT:
                fields.append((f.name, lenient, f.default))
            elif f.default_factory is not msgspec.NODEFAULT:
                fields.append((f.name, lenient, msgspec.field(default_factory=f.default_factory)))
            else:
                fields.append((f.name, lenient))
        # pickled (should one ever be), it is the contract's struct again
        reduce = lambda self: (cls, msgspec.structs.astuple(self))  # noqa: E731
        return msgspec.defstruct(cls.__name__, fields, bases=(cls,), module=__name__,
                                 tag=cls.__struct_config__.tag, namespace={"__reduce__": reduce})


def _walk(steps: tuple[Step, ...]) -> Callable[[Iterable[Any]], Iterable[Any]]:
    """The function from a list of events to the values ``steps`` reach (``None`` dropped
    at every step: an optional field, list or dict may be absent)."""
    funcs = []
    for step in steps:
        if step[0] == "attr":
            funcs.append(functools.partial(map, operator.attrgetter(step[1])))
        elif step[0] == "items":
            funcs.append(chain.from_iterable)
        else:
            funcs.append(lambda xs: chain.from_iterable(map(dict.values, xs)))

    def walk(xs: Iterable[Any]) -> Iterable[Any]:
        for f in funcs:
            xs = filter(_present, f(xs))
        return xs

    return walk


class _Keys:
    """How many keys decoded structs of one type held, at least: the tag's and each required
    field's, and each optional field's whose value is not its default (a key present with its
    default value is not counted)."""

    def __init__(self, cls: type) -> None:
        self.fixed = 0 if cls.__struct_config__.tag is None else 1
        self.optional: list[tuple[Callable, Callable]] = []  # (get, differs from the default)
        for f in msgspec.structs.fields(cls):
            if f.required:
                self.fixed += 1
                continue
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            differs = operator.is_not if default is None else operator.ne
            self.optional.append((operator.attrgetter(f.name), functools.partial(differs, default)))

    def count(self, structs: list) -> int:
        n = self.fixed * len(structs)
        for get, differs in self.optional:
            n += sum(map(differs, map(get, structs)))
        return n


class FastDecoder:
    """Decodes an envelope of ``event_type`` events (see the module docstring): ``decode``
    returns the events when every one is valid, ``None`` when it cannot vouch for them. An
    envelope holds one family, so every event has the fields the checks read."""

    def __init__(self, event_type: type) -> None:
        from pakit_stream.events.schema import Envelope, wire_type

        lenient = _Lenient()
        family, *refused = typing.get_args(wire_type(event_type))
        # the other member of the union refuses every event: what it holds is never read
        families = [lenient.struct(family), *(_Lenient().struct(t) for t in refused)]
        self._decoder = msgspec.json.Decoder(Envelope[functools.reduce(operator.or_, families)])
        by_pattern: dict[str, list[Callable]] = {}
        for pattern, steps in lenient.checks:
            by_pattern.setdefault(pattern, []).append(_walk(steps))
        self._checks = [(_joined_check(p).fullmatch, walks) for p, walks in by_pattern.items()]
        self._structs = [(_Keys(cls), _walk(steps)) for cls, steps in lenient.structs]
        self._dicts = [_walk(steps) for steps in lenient.dicts]

    def decode(self, value: bytes) -> list | None:
        if b"\\" in value:
            return None
        try:
            events = self._decoder.decode(value).events
        except msgspec.MsgspecError:
            return None
        try:
            colons = 1  # the envelope's key, then those of its events, their structs and dicts
            for keys, walk in self._structs:
                colons += keys.count(list(walk(events)))
            for walk in self._dicts:
                colons += sum(map(len, walk(events)))
            for fullmatch, paths in self._checks:
                strings: list[str] = []
                for walk in paths:
                    strings.extend(walk(events))
                if strings:
                    joined = "\n".join(strings)
                    if (joined.count("\n") != len(strings) - 1
                            or fullmatch(joined + "\n") is None):
                        return None
                    colons += joined.count(":")
        except (AttributeError, TypeError):  # not the one family an envelope holds
            return None
        # numpy counts a byte 4x as fast as bytes.count
        found = int(np.count_nonzero(np.frombuffer(value, dtype=np.uint8) == _COLON))
        return events if found == colons else None
