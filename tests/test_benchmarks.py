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
