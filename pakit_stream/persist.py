"""Atomic, authenticated files for learner state and checkpoints.

River learners persist by pickling, and unpickling runs code; so every file written here is
signed with HMAC-SHA256 under a secret key, and a file whose signature does not verify (torn,
corrupted, tampered with, or signed under another key) is refused with :class:`ModelLoadError`
*before* anything is unpickled. Writes go to a temporary file that is fsynced and renamed over the
target, so a reader sees the old file or the new one, never half of one.

The key comes from ``PAKIT_STREAM_STATE_KEY`` (via :class:`~pakit_stream.settings.Settings`) or
from a key file created on first use with mode 0600.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> key = b"k" * 32
>>> dump({"offsets": {"pakit.access/0": 42}}, d / "state.ckpt", key)
>>> load(d / "state.ckpt", key)["offsets"]
{'pakit.access/0': 42}
>>> _ = (d / "state.ckpt").write_bytes((d / "state.ckpt").read_bytes()[:-1] + b"!")
>>> load(d / "state.ckpt", key)
Traceback (most recent call last):
...
pakit_stream.exceptions.ModelLoadError: ...state.ckpt: signature mismatch (corrupt or tampered file)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import tempfile
from pathlib import Path

from pakit_stream.exceptions import ModelLoadError

__all__ = ["dump", "dumps", "load", "write_atomic", "resolve_key"]

_MAGIC = b"PAKITSTREAM1\n"
_SIG = hashlib.sha256().digest_size
DEFAULT_KEY_FILE = Path("~/.pakit-stream/state.key")


def resolve_key(key: bytes | str | None = None, key_file: Path | None = None) -> bytes:
    """The signing key: ``key`` if given, else the key file's content (created if missing)."""
    if key:
        return key.encode() if isinstance(key, str) else key
    path = (key_file or DEFAULT_KEY_FILE).expanduser()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(fresh.hex())
        return fresh
    except FileExistsError:  # another process created it between our read and write
        return bytes.fromhex(path.read_text().strip())


def dumps(obj, key: bytes) -> bytes:
    """Pickle ``obj`` and sign it: the bytes :func:`dump` writes."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (not yet in place: see :func:`replace`)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace(tmp: Path, path: Path) -> None:
    """Move the written file ``tmp`` to ``path`` and make the rename durable."""
    os.replace(tmp, path)
    dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write_file(Path(tmp), data)
        replace(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump(obj, path: Path, key: bytes) -> None:
    write_atomic(Path(path), dumps(obj, key))


def load(path: Path, key: bytes):
    """Verify ``path``'s signature, then unpickle it; refuse anything that does not verify."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: {exc.strerror or exc}") from exc
    head = len(_MAGIC) + _SIG
    if len(blob) < head or not blob.startswith(_MAGIC):
        raise ModelLoadError(f"{path}: not a pakit-stream state file")
    signature, payload = blob[len(_MAGIC):head], blob[head:]
    if not hmac.compare_digest(signature, hmac.new(key, payload, hashlib.sha256).digest()):
        raise ModelLoadError(f"{path}: signature mismatch (corrupt or tampered file)")
    try:
        return pickle.loads(payload)
    except Exception as exc:  # signed by us but unreadable: a version skew
        raise ModelLoadError(f"{path}: unreadable state ({exc})") from exc
