"""The benchmarks' event mix is valid telemetry: a change to the contract or the simulator that
breaks it fails here, not first when someone measures."""

import sys
from pathlib import Path

from pakit_stream.pipeline import Pipeline
from pakit_stream.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_the_ingest_mix_is_learned_without_a_reject():
    from ingest import envelopes, make_events

    pipeline = Pipeline(Settings())
    msgs = envelopes(make_events(2000), 500)
    for offset, (topic, value, _) in enumerate(msgs):
        assert pipeline.handle(topic, 0, offset, value) == []
    assert sum(pipeline.applied.values()) == 2000


def test_every_envelope_of_the_ingest_mix_takes_the_decoders_fast_path():
    """``benchmarks/ingest.py`` times the daemon's decoder against the strict types: on the
    mix, the fast path must vouch for every envelope, or the figure times the strict path."""
    from ingest import envelopes, make_events

    decoders = Pipeline(Settings()).decoders
    for topic, value, n in envelopes(make_events(2000), 500):
        events = decoders[topic]._fast.decode(value)
        assert events is not None and len(events) == n
