"""Batch training: datasets, configs, the trainer, evaluation (the guide's ``training`` API).

``ModelTrainer`` (the one module that imports torch) loads on first use, so that importing a
dataset from here never brings torch into the daemon's process.
"""

from pakit_stream.training.config import TrainingConfig
from pakit_stream.training.dataset import TrainingDataset
from pakit_stream.training.evaluator import ModelEvaluator, classification_metrics
from pakit_stream.training.scheduler import TrainingScheduler
from pakit_stream.training.tuner import HyperparameterTuner

__all__ = ["HyperparameterTuner", "ModelEvaluator", "ModelTrainer", "TrainingConfig",
           "TrainingDataset", "TrainingScheduler", "classification_metrics"]


def __getattr__(name: str):
    if name == "ModelTrainer":
        from pakit_stream.training.trainer import ModelTrainer

        return ModelTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
