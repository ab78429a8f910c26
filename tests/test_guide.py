"""Every Python block of the training guide, run in order, with ``pakit.ml`` → ``pakit_stream``.

The guide is read from the shared folder beside this checkout (``PAKIT_STREAM_GUIDE`` names
another path); where it is absent the test says so and skips. Three edits are unavoidable and
are the only ones made: placeholder block hashes (``'abc123...'``) become real SHA-256 digests
(the contract refuses anything else), the scheduler's ``while True`` loop runs once without its
hour of sleep, and ``torch`` is provided to the closing script, which uses it without importing
it. The data the guide leaves to the reader (``telemetry_events``, ``access_events``,
``peer_interactions``, ...) is small and real: blocks of this machine's Python installation,
really compressed.
"""

import hashlib
import os
import re
import sysconfig
from pathlib import Path

import msgspec
import pytest

from pakit_stream.events.schema import BlockStored
from pakit_stream.pipeline import best_codec
from pakit_stream.simulate import NodeSimulator, read_blocks

GUIDE = Path(os.environ.get("PAKIT_STREAM_GUIDE", Path(__file__).resolve().parents[2]
                            / "shared" / "seed" / "ML_TRAINING_GUIDE.md"))
REAL_HASH = hashlib.sha256(b"pakit-stream guide test block").hexdigest()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def adapt(code: str) -> str:
    code = re.sub(r"\bpakit\.ml\.(\w+)", r"pakit_stream.\1", code)
    code = code.replace("'abc123...'", repr(REAL_HASH)).replace("'abc123'", repr(REAL_HASH))
    code = code.replace("while True:", "for _ in range(1):")
    code = code.replace("time.sleep(3600)", "pass")
    return code


@pytest.fixture
def reader_data(tmp_path, monkeypatch):
    """The names the guide expects its reader to have, built from real local blocks."""
    monkeypatch.chdir(tmp_path)
    import time

    import torch

    from pakit_stream.telemetry import TelemetryCollector

    sim = NodeSimulator(read_blocks(Path(sysconfig.get_paths()["stdlib"]), block_size=4096,
                                    max_blocks=240))
    stored = [e for e in sim.stored_events() if e["event_type"] == "block_stored"]
    for e in stored:  # the guide's label is the codec the node chose: make that the best one
        e["compression_algorithm"] = best_codec(msgspec.convert(e, BlockStored))
    with TelemetryCollector(tmp_path / "telemetry.db") as spool:
        for e in stored:
            spool.record(**e)
    accesses = list(sim.access_events(60))
    by_node = {}
    for e in accesses:
        by_node.setdefault(e["node_id"], []).append(e["block_hash"])
    peers = list(sim.peer_events(200))
    episodes = [{"state": (1, 2, 0, 1), "action": (6, 10), "reward": 0.8},
                {"state": (1, 2, 0, 1), "action": (3, 5), "reward": 0.9}]
    from pakit_stream.features import FeatureExtractor
    from pakit_stream.training import TrainingDataset

    full = TrainingDataset()
    fx = FeatureExtractor()
    for e in stored:
        full.add_sample(fx.extract_features(e), e["compression_algorithm"])
    epochs = iter(range(10))
    return {
        "__name__": "__main__", "time": time, "torch": torch,
        "telemetry_events": stored, "access_events": accesses,
        "access_sequences": list(by_node.values()), "peer_interactions": peers,
        "network_episodes": episodes, "full_dataset": full, "num_epochs": 3,
        "train_epoch": lambda: (1.0 / (1 + next(epochs)), 0.5),
        "validate": lambda: (0.9, 0.6),
    }


@pytest.mark.skipif(not GUIDE.exists(), reason=f"training guide not found at {GUIDE}")
def test_every_code_block_of_the_guide_runs(reader_data, capsys):
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 10
    namespace = dict(reader_data)
    for i, block in enumerate(blocks):
        try:
            exec(compile(adapt(block), f"{GUIDE.name}[python block {i}]", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"guide block {i} failed: {exc!r}\n{adapt(block)}") from exc
    out = capsys.readouterr().out
    for expected in ("Final accuracy:", "Found 0 similar blocks", "Predicted next blocks:",
                     "Selected peer:", "Optimized params: fanout=", "Best parameters:",
                     "Accuracy:", "CV Accuracy:", "Trained compression_predictor",
                     "Test Accuracy:", "Model saved successfully!"):
        assert expected in out, expected
    assert Path("models/compression_predictor.pt").exists()
