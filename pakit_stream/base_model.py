"""What every model shares: its :class:`ModelConfig` and the online-model contract.

Online learners speak River's verbs (``learn_one``, ``predict_one``) and the guide's
(``train(records)``, ``predict(request)``, ``save(path)``, ``load(path)``). Their state pickles
(``__getstate__`` keeps it bounded) and is saved signed, see :mod:`pakit_stream.persist`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pakit_stream import persist

__all__ = ["ModelConfig", "OnlineModel"]


@dataclasses.dataclass
class ModelConfig:
    """Identity and placement of a model.

    >>> ModelConfig(name="peer_selector").device
    'cpu'
    """

    name: str = "model"
    model_type: str = "online"
    device: str = "cpu"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    key: bytes | None = dataclasses.field(default=None, repr=False)
    """Signing key for save/load; ``None`` uses the per-user key file."""


class OnlineModel(abc.ABC):
    """An online learner: learns one record at a time, answers from what it has seen."""

    default_name = "model"

    def __init__(self, model_config: ModelConfig | None = None) -> None:
        self.config = model_config or ModelConfig(name=self.default_name)
        self.n_updates = 0

    @abc.abstractmethod
    def learn_record(self, record: Mapping[str, Any]) -> None:
        """Learn from one historical record (a dict shaped like the guide's datasets)."""

    @abc.abstractmethod
    def predict(self, request: Mapping[str, Any]):
        """Answer one request, falling back to a safe default when nothing is learned."""

    def train(self, records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Learn from historical records in order; returns ``{"samples": n}``."""
        n = 0
        for record in records:
            self.learn_record(record)
            n += 1
        return {"samples": float(n), "updates": float(self.n_updates)}

    def save(self, path: str | Path) -> None:
        persist.dump(self, Path(path), persist.resolve_key(self.config.key))

    def load(self, path: str | Path):
        """Replace this model's state with the one saved at ``path``; returns ``self``."""
        other = persist.load(Path(path), persist.resolve_key(self.config.key))
        if type(other) is not type(self):
            from pakit_stream.exceptions import ModelLoadError

            raise ModelLoadError(f"{path}: holds a {type(other).__name__}, not a {type(self).__name__}")
        key = self.config.key
        self.__setstate__(other.__getstate__())
        self.config.key = key
        return self

    def __getstate__(self):
        state = dict(self.__dict__)
        state["config"] = dataclasses.replace(self.config, key=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
