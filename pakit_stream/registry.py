"""Versioned batch models: ``<store>/<name>/<version>/`` with metadata, a gate, and rollback.

Each version holds ``model.safetensors`` and ``metadata.json`` (metrics, training window, code
version, SHA-256 of the model file, status). ``<store>/<name>/SERVING.json`` names the serving
version and the ones served before it; it is replaced atomically, so a reader sees the old
pointer or the new one. A candidate is promoted only if it beats the serving version on a
held-out window of recent data; otherwise it is marked ``rejected`` and kept for inspection.
A model file whose checksum no longer matches its metadata is refused, and the serving version
stays as it was.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pakit_stream import __version__
from pakit_stream.exceptions import ModelLoadError, UsageError
from pakit_stream.persist import write_atomic

__all__ = ["ModelRegistry", "GateResult"]

log = logging.getLogger(__name__)
_MODEL_FILE = "model.safetensors"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class GateResult(dict):
    """``{accepted, candidate, serving, candidate_score, serving_score, reason}``."""


def _signature(key: bytes, head: dict[str, Any]) -> str:
    """HMAC-SHA256 of a record's header (its metadata holds the model file's SHA-256)."""
    body = json.dumps({k: v for k, v in head.items() if k != "hmac"}, sort_keys=True)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


class ModelRegistry:
    """``key``, when given, signs the records :meth:`export` writes, and :meth:`install`
    refuses a record without a valid signature."""

    def __init__(self, root: str | Path, key: bytes | None = None) -> None:
        self.root = Path(root)
        self.key = key

    # reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any(p.glob(f"*/{_MODEL_FILE}"))) if self.root.exists() else []

    def metadata(self, name: str, version: str) -> dict[str, Any]:
        path = self.root / name / version / "metadata.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Metadata of every version of ``name``, oldest first."""
        out = []
        for d in sorted((self.root / name).glob("*/metadata.json")):
            out.append(json.loads(d.read_text()))
        return sorted(out, key=lambda m: (m["created"], m["version"]))

    def _pointer(self, name: str) -> dict[str, Any]:
        path = self.root / name / "SERVING.json"
        pointer = json.loads(path.read_text()) if path.exists() else {}
        return {"version": None, "history": [], "canary": None, **pointer}

    def serving(self, name: str) -> str | None:
        return self._pointer(name)["version"]

    def canary(self, name: str) -> str | None:
        """The version serving a share of the nodes while it is compared (see
        :mod:`pakit_stream.canary`), or ``None``."""
        return self._pointer(name)["canary"]

    # writing -------------------------------------------------------------------------------
    def register(self, name: str, model, metrics: dict[str, Any],
                 window: dict[str, Any] | None = None) -> str:
        """Store ``model`` as a new candidate version of ``name``; returns the version."""
        base = time.strftime("v%Y%m%dT%H%M%S", time.gmtime())
        version, n = base, 1
        while (self.root / name / version).exists():
            n += 1
            version = f"{base}-{n}"
        folder = self.root / name / version
        folder.mkdir(parents=True)
        model.version = version
        model.save(folder / _MODEL_FILE)
        meta = {"name": name, "version": version, "kind": type(model).__name__,
                "created": time.time(), "metrics": _plain(metrics), "window": window or {},
                "code_version": __version__, "sha256": _sha256(folder / _MODEL_FILE),
                "status": "candidate"}
        write_atomic(folder / "metadata.json", json.dumps(meta, indent=2).encode())
        return version

    # sharing between workers ---------------------------------------------------------------
    def export(self, name: str, version: str | None = None, role: str = "serving") -> bytes:
        """One self-describing record of a version (default: the serving one, or the canary
        with ``role="canary"``), for the models topic: a 4-byte header length, a JSON header
        with its metadata and role, the model file."""
        version = version or (self.canary(name) if role == "canary" else self.serving(name))
        if version is None:
            raise ModelLoadError(f"{name}: no {role} version to publish")
        blob = self.verified_file(name, version).read_bytes()
        head = {"name": name, "version": version, "role": role,
                "metadata": self.metadata(name, version)}
        if self.key:
            head["hmac"] = _signature(self.key, head)
        raw = json.dumps(head).encode()
        return len(raw).to_bytes(4, "big") + raw + blob

    def install(self, record: bytes, known: Collection[str] | None = None
                ) -> tuple[str, str, str]:
        """Store a version another worker published with :meth:`export`, without serving it;
        returns ``(name, version, role)``. The file must match the SHA-256 of its metadata,
        names must be plain path components (and among ``known``, when given)."""
        try:
            n = int.from_bytes(record[:4], "big")
            head = json.loads(record[4:4 + n])
            name, version, meta = head["name"], head["version"], head["metadata"]
            role = head.get("role", "serving")
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"not a published model record: {exc}") from exc
        blob = record[4 + n:]
        if self.key and not hmac.compare_digest(str(head.get("hmac", "")),
                                                _signature(self.key, head)):
            raise ModelLoadError(f"{name} {version}: the record is unsigned or not signed with "
                                 "this worker's PAKIT_STREAM_MODEL_KEY; refused")
        for part in (name, version):
            if not isinstance(part, str) or not _SAFE.fullmatch(part):
                raise ModelLoadError(f"unsafe model name or version {part!r}")
        if known is not None and name not in known:
            raise ModelLoadError(f"unknown model {name!r}; refused")
        if role not in ("serving", "canary"):
            raise ModelLoadError(f"{name} {version}: unknown role {role!r}; refused")
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise ModelLoadError(f"{name} {version}: file does not match its SHA-256; refused")
        if meta.get("status") == "rejected":
            raise ModelLoadError(f"{name} {version} was rejected by its gate; refused")
        folder = self.root / name / version
        if not (folder / _MODEL_FILE).exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / _MODEL_FILE, blob)
            write_atomic(folder / "metadata.json",
                         json.dumps({**meta, "adopted": time.time()}, indent=2).encode())
        return name, version, role

    def adopt(self, record: bytes) -> tuple[str, str]:
        """:meth:`install` a published version and make it what it was published as."""
        name, version, role = self.install(record)
        (self.start_canary if role == "canary" else self.promote)(name, version)
        return name, version

    def _set_status(self, name: str, version: str, status: str, **extra) -> None:
        meta = self.metadata(name, version)
        meta.update(status=status, **extra)
        write_atomic(self.root / name / version / "metadata.json", json.dumps(meta, indent=2).encode())

    def verified_file(self, name: str, version: str) -> Path:
        meta = self.metadata(name, version)
        path = self.root / name / version / _MODEL_FILE
        if not path.exists() or _sha256(path) != meta["sha256"]:
            raise ModelLoadError(f"{path}: checksum does not match its metadata (corrupt or "
                                 "tampered); refused")
        return path

    def _servable(self, name: str, version: str) -> None:
        """Refuse a version whose file is not intact, or that a gate rejected."""
        self.verified_file(name, version)
        if self.metadata(name, version).get("status") == "rejected":
            raise ModelLoadError(f"{name} {version} was rejected by its gate; it never serves")

    def promote(self, name: str, version: str) -> None:
        """Make ``version`` the serving one (after checking its file is intact and that no
        gate rejected it)."""
        self._servable(name, version)
        pointer = self._pointer(name)
        if pointer["canary"] is not None:  # promoted, or replaced by another version
            if pointer["canary"] != version:
                self._set_status(name, pointer["canary"], "rolled_back")
            pointer["canary"] = None
        elif pointer["version"] == version:
            return
        if pointer["version"] and pointer["version"] != version:
            pointer["history"].append(pointer["version"])
            self._set_status(name, pointer["version"], "retired")
        pointer["version"] = version
        write_atomic(self.root / name / "SERVING.json", json.dumps(pointer).encode())
        self._set_status(name, version, "serving", promoted=time.time())

    def start_canary(self, name: str, version: str) -> None:
        """Make ``version`` the canary: it serves a share of the nodes until it is promoted
        (:meth:`promote`) or rolled back (:meth:`end_canary`)."""
        self._servable(name, version)
        pointer = self._pointer(name)
        if pointer["canary"] == version or pointer["version"] == version:
            return
        if pointer["canary"] is not None:
            self._set_status(name, pointer["canary"], "rolled_back")
        pointer["canary"] = version
        write_atomic(self.root / name / "SERVING.json", json.dumps(pointer).encode())
        self._set_status(name, version, "canary", canary_started=time.time())

    def end_canary(self, name: str, reason: str, **extra) -> str | None:
        """Roll the canary back (the serving version stays); returns it, or ``None``."""
        pointer = self._pointer(name)
        version = pointer["canary"]
        if version is None:
            return None
        pointer["canary"] = None
        write_atomic(self.root / name / "SERVING.json", json.dumps(pointer).encode())
        self._set_status(name, version, "rolled_back", reason=reason, **extra)
        return version

    def prune(self, name: str, keep: int) -> list[str]:
        """Delete the versions of ``name`` other than the serving one, the canary, the
        rollback target and the ``keep`` newest; returns those deleted."""
        import shutil

        pointer = self._pointer(name)
        kept = {pointer["version"], pointer["canary"], *pointer["history"][-1:]}
        versions = [m["version"] for m in self.versions(name)]  # oldest first
        kept.update(versions[-keep:] if keep > 0 else ())
        gone = [v for v in versions if v not in kept]
        for version in gone:
            shutil.rmtree(self.root / name / version, ignore_errors=True)
        pointer["history"] = [v for v in pointer["history"] if v not in gone]
        if gone and (self.root / name / "SERVING.json").exists():
            write_atomic(self.root / name / "SERVING.json", json.dumps(pointer).encode())
        return gone

    def reject(self, name: str, version: str, reason: str, **extra) -> None:
        self._set_status(name, version, "rejected", reason=reason, **extra)

    def rollback(self, name: str) -> str:
        """Serve the previously served version again; returns it."""
        pointer = self._pointer(name)
        if not pointer["history"]:
            raise UsageError(f"{name}: no earlier version to roll back to")
        previous = pointer["history"].pop()
        self.verified_file(name, previous)
        current = pointer["version"]
        pointer["version"] = previous
        write_atomic(self.root / name / "SERVING.json", json.dumps(pointer).encode())
        if current:
            self._set_status(name, current, "rolled_back")
        self._set_status(name, previous, "serving", promoted=time.time())
        return previous

    def load(self, name: str, model, version: str | None = None):
        """Load ``version`` (default: the serving one) into ``model``, checksum verified."""
        version = version or self.serving(name)
        if version is None:
            raise ModelLoadError(f"{name}: no serving version")
        return model.load(self.verified_file(name, version))

    # the gate ------------------------------------------------------------------------------
    def gate(self, name: str, candidate_version: str, model_factory: Callable[[], Any],
             score: Callable[[Any], float], min_gain: float = 0.0,
             floor: float | None = None, canary: bool = False) -> GateResult:
        """Promote the candidate if ``score(candidate) > score(serving) + min_gain`` on the
        caller's held-out window (always, when nothing serves yet) and, with ``floor``, if
        ``score(candidate) > floor``; else reject it. With ``canary``, an accepted candidate
        becomes the canary instead when a version serves (``canary`` is then true in the
        result)."""
        candidate = self.load(name, model_factory(), candidate_version)
        cand_score = float(score(candidate))
        if floor is not None and not cand_score > floor:
            reason = f"held-out score {cand_score:.4f} is not above {floor}"
            self.reject(name, candidate_version, reason,
                        gate={"candidate_score": cand_score, "floor": floor})
            return GateResult(accepted=False, candidate=candidate_version,
                              serving=self.serving(name), candidate_score=cand_score,
                              serving_score=None, reason=reason)
        serving_version = self.serving(name)
        serving_score = None
        if serving_version is not None:
            try:
                serving_score = float(score(self.load(name, model_factory(), serving_version)))
            except ModelLoadError:
                log.exception("serving %s %s unreadable; the candidate is judged alone",
                              name, serving_version)
        accepted = serving_score is None or cand_score > serving_score + min_gain
        verdict = {"gate": {"candidate_score": cand_score, "serving_score": serving_score,
                            "serving_version": serving_version}}
        canary = canary and accepted and serving_version is not None
        if canary:
            self.start_canary(name, candidate_version)
            self._set_status(name, candidate_version, "canary", **verdict)
            reason = "beats the serving version; serves a share of the nodes first"
        elif accepted:
            self.promote(name, candidate_version)
            self._set_status(name, candidate_version, "serving", **verdict)
            reason = "no serving version" if serving_score is None else "beats the serving version"
        else:
            reason = (f"held-out score {cand_score:.4f} does not beat serving "
                      f"{serving_score:.4f} + {min_gain}")
            self.reject(name, candidate_version, reason, **verdict)
        return GateResult(accepted=accepted, candidate=candidate_version, serving=serving_version,
                          candidate_score=cand_score, serving_score=serving_score, reason=reason,
                          canary=canary)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
