"""What the torch models share: a device, a net, and files that never unpickle.

A model is saved as one safetensors file: the weights, plus a JSON header (kind, classes or
vocabulary, sizes, version). Loading parses that header and copies tensors; nothing executes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pakit_stream.base_model import ModelConfig
from pakit_stream.exceptions import ModelLoadError, UsageError
from pakit_stream.modelfile import read_model_file

__all__ = ["BatchModel", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(requested: str | None) -> torch.device:
    """``cuda`` when asked for (or by default) and present, else ``cpu``."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available: using the CPU", requested)
        return torch.device("cpu")
    return torch.device(requested)


class BatchModel:
    """Base of the torch models: subclasses build ``self.net`` and describe themselves."""

    default_name = "model"
    hidden_dim = 128
    dropout = 0.1

    def __init__(self, model_config: ModelConfig | None = None) -> None:
        self.config = model_config or ModelConfig(name=self.default_name, model_type="batch")
        self.net: torch.nn.Module | None = None
        self.version: str | None = None

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    # subclasses --------------------------------------------------------------------------
    def prepare(self, train_data, hidden_dim: int | None = None, dropout: float | None = None):
        """Fix inputs and outputs from the training data and build a fresh net."""
        raise NotImplementedError

    def encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets as tensors."""
        raise NotImplementedError

    def _describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _rebuild(self, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    # files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        if self.net is None:
            raise UsageError(f"{type(self).__name__} has not been trained")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"kind": type(self).__name__, "version": self.version, **self._describe()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"pakit": json.dumps(meta)})
        tmp.replace(path)

    def load(self, path: str | Path):
        """Restore weights and description from ``path``; returns ``self``. A file that is not
        a readable safetensors file of this model kind raises :class:`ModelLoadError`."""
        meta, tensors = read_model_file(path, type(self).__name__, framework="pt")
        try:
            self._rebuild(meta)
            self.net.load_state_dict(tensors, strict=True)
        except Exception as exc:
            self.net = None
            raise ModelLoadError(f"{path}: weights do not fit the model ({exc})") from exc
        self.net.to(self.device).eval()
        self.version = meta.get("version")
        return self
