"""Atomic, authenticated files for learner state and checkpoints.

River learners persist by pickling, and unpickling runs code; so every file written here is
signed with HMAC-SHA256 under a secret key, and a file whose signature does not verify (torn,
corrupted, tampered with, or signed under another key) is refused with :class:`ModelLoadError`
*before* anything is unpickled. Writes go to a temporary file that is fsynced and renamed over the
target, so a reader sees the old file or the new one, never half of one.

The key comes from ``PAKIT_STREAM_STATE_KEY`` (via :class:`~pakit_stream.settings.Settings`) or
from ``PAKIT_STREAM_STATE_KEY_FILE``, created on first use with mode 0600 and fsynced. A key
shorter than :data:`MIN_KEY_BYTES` is refused, and so is a key file that holds one (a crash
between its creation and its write leaves an empty file, which must never sign anything).

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

from pakit_stream.exceptions import ConfigError, ModelLoadError

__all__ = ["dump", "dumps", "load", "write_atomic", "resolve_key", "MIN_KEY_BYTES"]

_MAGIC = b"PAKITSTREAM1\n"
_SIG = hashlib.sha256().digest_size
DEFAULT_KEY_FILE = Path("~/.pakit-stream/state.key")
MIN_KEY_BYTES = 32


def resolve_key(key: bytes | str | None = None, key_file: Path | None = None) -> bytes:
    """The signing key: ``key`` if given, else the key file's (created if missing). A key of
    fewer than :data:`MIN_KEY_BYTES` bytes raises :class:`ConfigError`."""
    if key:
        key = key.encode() if isinstance(key, str) else key
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the state key must be at least {MIN_KEY_BYTES} bytes")
        return key
    path = (key_file or DEFAULT_KEY_FILE).expanduser()
    if not path.exists():
        _create_key(path)
    try:
        found = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ConfigError(f"{path}: not a hex key") from None
    if len(found) < MIN_KEY_BYTES:
        raise ConfigError(f"{path}: a key of {len(found)} bytes (at least {MIN_KEY_BYTES}); "
                          "an empty file is what a crash while creating it leaves: delete it "
                          "to start with a new key (and empty state)")
    return found


def _create_key(path: Path) -> None:
    """A new random key at ``path``, whole or not at all: written and fsynced under another
    name, then linked into place (a concurrent creator's key wins), and the folder fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            f.write(secrets.token_bytes(MIN_KEY_BYTES).hex())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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
