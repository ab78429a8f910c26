"""The batch side: datasets, the trainer, evaluation, and both torch models."""

import random
from collections import Counter

import msgspec
import numpy as np
import pytest
import torch

from pakit_stream.batch.compression import CompressionPredictor
from pakit_stream.batch.prefetch import PrefetchEngine
from pakit_stream.events.schema import BlockStored
from pakit_stream.exceptions import ModelLoadError
from pakit_stream.features import FeatureExtractor
from pakit_stream.pipeline import best_codec
from pakit_stream.simulate import NodeSimulator, default_source, read_blocks
from pakit_stream.training import (ModelEvaluator, ModelTrainer, TrainingConfig,
                                   TrainingDataset)


@pytest.fixture(scope="module")
def codec_dataset():
    """Real blocks of Python's stdlib, really compressed: the codec label of each."""
    sim = NodeSimulator(read_blocks(default_source(), block_size=8192, max_blocks=600))
    fx, ds = FeatureExtractor(), TrainingDataset()
    for e in sim.stored_events():
        if e["event_type"] == "block_stored":
            event = msgspec.convert(e, BlockStored)
            ds.add_sample(fx.extract_features(event), best_codec(event))
    return ds


def synthetic(n=600, seed=0):
    rng = random.Random(seed)
    ds = TrainingDataset()
    for _ in range(n):
        a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
        ds.add_sample({"a": a, "b": b, "noise": rng.random()}, "hi" if a + b > 0 else "lo")
    return ds


def test_split_is_disjoint_stratified_and_complete():
    ds = synthetic(300)
    train, val, test = ds.split(0.7, 0.15, 0.15, seed=3)
    ids = lambda d: {(round(f["a"], 9), round(f["b"], 9)) for f, _ in d}  # noqa: E731
    assert not ids(train) & ids(test) and not ids(val) & ids(test)
    assert len(train) + len(val) + len(test) == 300
    share = Counter(ds.labels)["hi"] / 300
    assert abs(Counter(test.labels)["hi"] / len(test) - share) < 0.05


def test_folds_hold_each_sample_out_once():
    ds = synthetic(100)
    held = [s for _, h in ds.folds(5) for s in h]
    assert len(held) == 100 and all(len(t) + len(h) == 100 for t, h in ds.folds(5))


def test_dataset_round_trips(tmp_path):
    ds = synthetic(20)
    ds.save(tmp_path / "d.json")
    assert TrainingDataset.load(tmp_path / "d.json").samples == ds.samples


def test_trainer_learns_keeps_the_best_epoch_and_writes_its_records(tmp_path):
    train, val, test = synthetic(900).split(seed=1)
    model = CompressionPredictor()
    cfg = TrainingConfig(num_epochs=40, early_stopping_patience=3, batch_size=64,
                         learning_rate=0.01, checkpoint_dir=tmp_path / "ckpt",
                         gradient_accumulation_steps=2, hidden_dim=32)
    trainer = ModelTrainer(cfg)
    metrics = trainer.train(model, train, val)
    assert model.hidden_dim == 32 and metrics["samples"] == len(train)
    assert metrics["epochs"] <= 40 and metrics["best_epoch"] < metrics["epochs"]
    assert metrics["loss"] == min(r["val_loss"] for r in trainer.history)
    assert ModelEvaluator().evaluate(model, test)["accuracy"] > 0.9  # held out, never trained on
    assert (tmp_path / "ckpt" / "best.safetensors").exists()
    assert list((tmp_path / "ckpt" / "runs").glob("events.out.tfevents.*"))


def test_early_stopping_stops_when_validation_stops_improving():
    rng = random.Random(0)
    noise = TrainingDataset([({"x": rng.random()}, rng.choice("ab")) for _ in range(400)])
    train, val, _ = noise.split(0.5, 0.5, 0.0)
    metrics = ModelTrainer(TrainingConfig(num_epochs=200, early_stopping_patience=2,
                                          learning_rate=0.05)).train(
        CompressionPredictor(), train, val)
    assert metrics["epochs"] < 200


def test_codec_predictor_on_real_blocks_beats_the_majority_class(codec_dataset):
    train, val, test = codec_dataset.split(seed=2)
    model = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=60, early_stopping_patience=5, batch_size=64)).train(
        model, train, val)
    report = ModelEvaluator().evaluate(model, test)
    majority = Counter(train.labels).most_common(1)[0][0]
    baseline = sum(label == majority for label in test.labels) / len(test)
    assert report["accuracy"] >= baseline
    assert report["confusion_matrix"].sum() == len(test)
    hint = model.predict(test[0][0])
    assert hint["algorithm"] in model.classes and 0 < hint["confidence"] <= 1


def test_cross_validation_reports_mean_and_spread():
    cv = ModelEvaluator(TrainingConfig(num_epochs=15, learning_rate=0.01)).cross_validate(
        CompressionPredictor, synthetic(300), k_folds=3)
    assert len(cv["folds"]) == 3 and cv["mean_accuracy"] > 0.8 and cv["std_accuracy"] >= 0


def test_saved_models_load_without_unpickling_and_refuse_damage(tmp_path):
    train, val, test = synthetic(300).split(seed=1)
    model = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=5)).train(model, train, val)
    model.version = "v1"
    model.save(tmp_path / "m.safetensors")
    again = CompressionPredictor().load(tmp_path / "m.safetensors")
    feats = [f for f, _ in test]
    assert again.predict_labels(feats) == model.predict_labels(feats) and again.version == "v1"
    blob = bytearray((tmp_path / "m.safetensors").read_bytes())
    (tmp_path / "cut.safetensors").write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(ModelLoadError):
        CompressionPredictor().load(tmp_path / "cut.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelLoadError):
        CompressionPredictor().load(tmp_path / "pickle.pt")
    with pytest.raises(ModelLoadError, match="not a PrefetchEngine"):
        PrefetchEngine().load(tmp_path / "m.safetensors")


def loop_sequences(n_loops=20, length=12, repeats=15, seed=0):
    rng = random.Random(seed)
    loops = [[f"{rng.getrandbits(64):016x}" for _ in range(length)] for _ in range(n_loops)]
    return [loop * repeats for loop in loops]


def test_prefetch_engine_learns_sequences_and_falls_back_for_unknown_blocks(tmp_path):
    seqs = loop_sequences()
    engine = PrefetchEngine(max_vocab_size=1000, hidden_dim=64)
    metrics = engine.train(seqs, TrainingConfig(num_epochs=30, learning_rate=0.01,
                                                early_stopping_patience=4))
    assert metrics["accuracy"] > 0.9  # next block of held-out sequence tails
    loop = seqs[3][:12]
    assert engine.predict({"recent_accesses": loop[:5], "k": 1}) == [loop[5]]
    assert engine.predict({"recent_accesses": ["never-seen"], "k": 3}) == []
    small = PrefetchEngine(max_vocab_size=30)  # most blocks fall outside the vocabulary
    small.train(seqs, TrainingConfig(num_epochs=3))
    outside = next(b for b in seqs[-1] if b not in small.vocab)
    nxt = seqs[-1][seqs[-1].index(outside) + 1]
    assert small.predict({"recent_accesses": [outside], "k": 1}) == [nxt]  # the Markov table
    engine.save(tmp_path / "p.safetensors")
    again = PrefetchEngine().load(tmp_path / "p.safetensors")
    assert again.predict({"recent_accesses": loop[:5], "k": 2}) == engine.predict(
        {"recent_accesses": loop[:5], "k": 2})


def test_cuda_request_falls_back_to_cpu_here():
    from pakit_stream.base_model import ModelConfig

    model = CompressionPredictor(ModelConfig(device="cuda"))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device.type == expected


def test_tuner_searches_the_guide_space_on_validation_data():
    from pakit_stream.training import HyperparameterTuner

    train, val, _ = synthetic(300).split(seed=4)
    tuner = HyperparameterTuner(model_class=CompressionPredictor, train_data=train, val_data=val,
                                n_trials=4, base_config=TrainingConfig(num_epochs=5))
    best = tuner.tune({"learning_rate": ("float", 1e-4, 1e-2, True),
                       "batch_size": ("int", 16, 128),
                       "hidden_dim": ("categorical", [16, 32])},
                      metric="accuracy", direction="maximize")
    assert set(best) == {"learning_rate", "batch_size", "hidden_dim"}
    assert tuner.best_value == max(t.value for t in tuner.study.trials)
    TrainingConfig(**best)  # the guide trains its final model with TrainingConfig(**best_params)
    with pytest.raises(ValueError, match="not TrainingConfig fields"):
        tuner.tune({"colour": ("categorical", ["red"])})


def test_scheduler_trains_from_a_collector_spool_and_reschedules(tmp_path):
    from pakit_stream.telemetry import TelemetryCollector
    from pakit_stream.training import TrainingScheduler

    sim = NodeSimulator(read_blocks(default_source(), block_size=8192, max_blocks=120))
    with TelemetryCollector(tmp_path / "telemetry.db") as spool:
        for e in sim.stored_events():
            if e["event_type"] == "block_stored":
                spool.record(**e)
        for e in sim.access_events(40):
            spool.record(**e)
    now = [1000.0]
    scheduler = TrainingScheduler(TrainingConfig(num_epochs=3), clock=lambda: now[0])
    scheduler.schedule_job("compression_predictor", tmp_path / "telemetry.db",
                           tmp_path / "ckpt", schedule="daily", priority=2)
    scheduler.schedule_job("prefetch_engine", tmp_path / "telemetry.db", tmp_path / "ckpt",
                           schedule="hourly", priority=1)
    first = scheduler.run_next_job()
    assert first["model_name"] == "prefetch_engine" and first["status"] == "ok"
    second = scheduler.run_next_job()
    assert second["model_name"] == "compression_predictor" and second["status"] == "ok"
    assert 0 <= second["metrics"]["accuracy"] <= 1 and "test_accuracy" in second["metrics"]
    assert scheduler.run_next_job() is None  # nothing due until an hour passes
    now[0] += 3600
    assert scheduler.run_next_job()["model_name"] == "prefetch_engine"
    assert (tmp_path / "ckpt" / "compression_predictor.safetensors").exists()
    CompressionPredictor().load(tmp_path / "ckpt" / "compression_predictor.safetensors")


def test_numpy_serving_gives_torchs_answers(tmp_path, codec_dataset):
    from pakit_stream.serving.codec import ServedCodecModel

    train, val, test = codec_dataset.split(seed=5)
    model = CompressionPredictor()
    ModelTrainer(TrainingConfig(num_epochs=10)).train(model, train, val)
    model.version = "v-test"
    model.save(tmp_path / "m.safetensors")
    served = ServedCodecModel(tmp_path / "m.safetensors")
    feats = [f for f, _ in test]
    expected = model.predict_proba(feats).numpy()
    got = np.stack([served.proba(f) for f in feats])
    assert np.allclose(got, expected, atol=1e-5)
    assert served.predict(feats[0])["model_version"] == "v-test"


def test_numpy_gru_serving_gives_torchs_answers(tmp_path):
    from pakit_stream.exceptions import ModelLoadError
    from pakit_stream.serving.prefetch import ServedPrefetchModel

    blocks = loop_sequences(n_loops=6, length=10, repeats=8)
    by_ids = PrefetchEngine(max_vocab_size=200, hidden_dim=8, embed_dim=4)
    by_ids.train(blocks, TrainingConfig(num_epochs=1))
    by_ids.save(tmp_path / "ids.safetensors")
    with pytest.raises(ModelLoadError, match="not chunk-index steps"):
        ServedPrefetchModel(tmp_path / "ids.safetensors")  # the daemon serves step nets only
    # the daemon's net reads steps: tokens that are integers
    seqs = [[str(int(b, 16) % 997 - 400) for b in seq] for seq in blocks]
    engine = PrefetchEngine(max_vocab_size=200, hidden_dim=32, embed_dim=16)
    engine.train(seqs, TrainingConfig(num_epochs=5))
    engine.version = "p1"
    engine.save(tmp_path / "p.safetensors")
    served = ServedPrefetchModel(tmp_path / "p.safetensors")
    for start in range(0, 30, 7):
        recent = seqs[1][start:start + 5]
        with torch.no_grad():
            x = torch.tensor([engine._context(engine._ids(recent))])
            expected = engine.net(x)[0].numpy()
        assert np.allclose(served.scores(recent), expected, atol=1e-4)
        assert served.predict(recent, 3) == engine.predict({"recent_accesses": recent, "k": 3})
