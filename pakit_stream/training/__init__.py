"""Batch training: datasets, configs, the trainer, evaluation (the guide's ``training`` API)."""

from pakit_stream.training.config import TrainingConfig
from pakit_stream.training.dataset import TrainingDataset
from pakit_stream.training.evaluator import ModelEvaluator, classification_metrics
from pakit_stream.training.scheduler import TrainingScheduler
from pakit_stream.training.trainer import ModelTrainer
from pakit_stream.training.tuner import HyperparameterTuner

__all__ = ["HyperparameterTuner", "ModelEvaluator", "ModelTrainer", "TrainingConfig",
           "TrainingDataset", "TrainingScheduler", "classification_metrics"]
