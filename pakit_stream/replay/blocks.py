"""A directory of files as the blocks a node would store: content-defined chunks (FastCDC).

Chunk boundaries depend on content, not offsets, so an insertion in a file moves only the
chunks around it: the same property real content-addressed stores rely on for dedup.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "a.bin").write_bytes(bytes(range(256)) * 400)
>>> chunks = list(chunk_tree(root, avg_size=8192))
>>> sum(len(c.data) for c in chunks), chunks[0].path, chunks[0].offset
(102400, 'a.bin', 0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyfastcdc import FastCDC

from pakit_stream.simulate import block_events

__all__ = ["Chunk", "chunk_tree", "stored_events"]


@dataclass(frozen=True)
class Chunk:
    path: str  # relative to the root
    offset: int
    data: bytes = field(repr=False)

    @property
    def block_hash(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def depth(self) -> int:
        return self.path.count("/") + 1


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def chunk_tree(root: Path | str, avg_size: int = 16384, max_bytes: int | None = None
               ) -> Iterator[Chunk]:
    """Every regular file under ``root`` (sorted, so runs repeat), cut by FastCDC with average
    chunk ``avg_size`` (min a quarter, max eight times that); at most ``max_bytes`` in all."""
    root = Path(root)
    cdc = FastCDC(avg_size=avg_size, min_size=max(64, avg_size // 4), max_size=avg_size * 8)
    budget = max_bytes if max_bytes is not None else float("inf")
    for path in _files(root):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        rel = path.name if root.is_file() else path.relative_to(root).as_posix()
        for c in cdc.cut_buf(data):
            if budget <= 0:
                return
            budget -= c.length
            yield Chunk(rel, c.offset, bytes(c.data))


def stored_events(root: Path | str, nodes: Sequence[str] = ("node-0",), avg_size: int = 16384,
                  max_bytes: int | None = None, ts0: float = 0.0) -> Iterator[dict]:
    """``block_stored`` (every codec measured on the block) and ``block_fingerprint`` events for
    the chunks under ``root``, spread round-robin over ``nodes``; timestamps count up from ts0."""
    for i, chunk in enumerate(chunk_tree(root, avg_size, max_bytes)):
        yield from block_events(chunk.data, chunk.block_hash, nodes[i % len(nodes)], chunk.depth,
                                ts0 + i * 0.001)
