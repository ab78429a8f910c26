"""Hyperparameter search with Optuna, in the training guide's search-space format.

A search space maps a :class:`TrainingConfig` field to ``('float', low, high[, log])``,
``('int', low, high)`` or ``('categorical', [choices])``. Each trial trains a fresh model on
``train_data`` and is scored on ``val_data``; the test set is never seen.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from pakit_stream.exceptions import UsageError
from pakit_stream.training.config import TrainingConfig

__all__ = ["HyperparameterTuner"]

log = logging.getLogger(__name__)


def _suggest(trial, name: str, spec) -> Any:
    kind = spec[0]
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=bool(spec[3]) if len(spec) > 3 else False)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2], log=bool(spec[3]) if len(spec) > 3 else False)
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec[1]))
    raise UsageError(f"{name}: unknown search space kind {kind!r}")


class HyperparameterTuner:
    def __init__(self, model_class, train_data, val_data, n_trials: int = 50,
                 model_config=None, base_config: TrainingConfig | None = None,
                 seed: int = 0) -> None:
        self.model_class, self.train_data, self.val_data = model_class, train_data, val_data
        self.n_trials, self.model_config, self.seed = n_trials, model_config, seed
        self.base_config = base_config or TrainingConfig(num_epochs=20)
        self.best_params: dict[str, Any] | None = None
        self.best_value: float | None = None
        self.study = None

    def tune(self, search_space: Mapping[str, tuple], metric: str = "accuracy",
             direction: str = "maximize") -> dict[str, Any]:
        import optuna

        fields = {f.name for f in dataclasses.fields(TrainingConfig)}
        unknown = set(search_space) - fields
        if unknown:
            raise UsageError(f"not TrainingConfig fields: {sorted(unknown)}")

        def objective(trial) -> float:
            from pakit_stream.training.trainer import ModelTrainer

            params = {name: _suggest(trial, name, spec) for name, spec in search_space.items()}
            config = dataclasses.replace(self.base_config, **params)
            model = self.model_class(self.model_config)
            return float(ModelTrainer(config).train(model, self.train_data, self.val_data)[metric])

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction=direction,
                                         sampler=optuna.samplers.TPESampler(seed=self.seed))
        self.study.optimize(objective, n_trials=self.n_trials)
        self.best_params = dict(self.study.best_params)
        self.best_value = float(self.study.best_value)
        return self.best_params
