"""How a batch model is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pakit_stream.exceptions import UsageError

__all__ = ["TrainingConfig"]


@dataclasses.dataclass
class TrainingConfig:
    """Optimiser, schedule and bookkeeping of one training run.

    >>> TrainingConfig(learning_rate=0.01, hidden_dim=64).batch_size
    32
    """

    learning_rate: float = 1e-3
    batch_size: int = 32
    num_epochs: int = 50
    early_stopping_patience: int = 3
    checkpoint_dir: str | Path | None = None
    """Where the best weights of each run are kept (safetensors); ``None``: not kept."""
    lr_schedule: str | None = "plateau"
    """``plateau`` (halve on a flat validation loss), ``cosine``, or ``None``."""
    weight_decay: float = 1e-4
    gradient_accumulation_steps: int = 1
    mixed_precision: bool | None = None
    """``None``: on when training on CUDA, off on CPU."""
    hidden_dim: int | None = None
    """Width of the model's hidden layers; ``None`` keeps the model's own."""
    dropout: float | None = None
    device: str | None = None
    """``None``: the model config's device, else ``cuda`` when available."""
    tensorboard_dir: str | Path | None = None
    """TensorBoard scalars (loss and accuracy per epoch); defaults to ``checkpoint_dir/runs``."""
    num_threads: int | None = None
    """CPU threads for torch; ``None`` leaves one core free for the event loop."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.batch_size < 1 or self.num_epochs < 1:
            raise UsageError("learning_rate, batch_size and num_epochs must be positive")
        if self.gradient_accumulation_steps < 1 or self.early_stopping_patience < 1:
            raise UsageError("gradient_accumulation_steps and early_stopping_patience must be >= 1")
        if self.lr_schedule not in (None, "plateau", "cosine"):
            raise UsageError(f"unknown lr_schedule {self.lr_schedule!r}")
