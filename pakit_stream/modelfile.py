"""Reading a model file: safetensors weights plus the JSON header the batch models write.

Parsing the header and copying tensors executes nothing, so a model file from anywhere is safe
to open; a file that is not one, or holds another kind of model, raises ModelLoadError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from pakit_stream.exceptions import ModelLoadError

__all__ = ["read_model_file"]


def read_model_file(path: str | Path, kind: str, framework: str = "numpy"
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(header, tensors)`` of a ``kind`` model; tensors as numpy arrays or torch tensors."""
    try:
        with safe_open(str(path), framework=framework) as f:
            meta = json.loads((f.metadata() or {})["pakit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable model file ({exc})") from exc
    if meta.get("kind") != kind:
        raise ModelLoadError(f"{path}: holds a {meta.get('kind')}, not a {kind}")
    return meta, tensors
