"""Block access traces, in the formats they are published in, as ``block_accessed`` events.

Formats (chosen by flag, never guessed from the file name; gzip and xz are recognised by their
magic bytes):

``oracle-general``
    libCacheSim's binary records of 24 bytes, little-endian: ``uint32 timestamp, uint64 obj_id,
    uint32 obj_size, int64 next_access_vtime``.
``lines``
    one block id per line (integers, or any token: tokens are numbered in order of first use).
``csv``
    a CSV file with a header; ``column`` names the block-number column (default ``lbn``).
``u32le``, ``u32be``
    ``uint32`` block addresses back to back, little- or big-endian. Byte order matters: read in
    the wrong one, a trace keeps its identities (a cache simulation looks the same) but loses
    every stride (the CloudPhysics w106 trace read little-endian has 37.7% of steps of +1,
    big-endian none).

:func:`read_requests` also gives each access's **span**, the number of consecutive block
addresses it covers: ``obj_size / sector_bytes`` for oracleGeneral block traces (their
``obj_id`` is a sector address and ``obj_size`` the request's bytes), 1 for the other formats.

>>> import tempfile, pathlib, gzip
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.gz"
>>> _ = p.write_bytes(gzip.compress(b"7\\n8\\n7\\n9\\n"))
>>> read_trace(p, "lines").tolist()
[7, 8, 7, 9]
>>> [e["cache_hit"] for e in access_events([7, 8, 7, 9], cache_blocks=2)]
[False, False, True, False]
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import lzma
from itertools import islice
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pakit_stream.exceptions import DataError, UsageError

__all__ = ["TRACE_FORMATS", "read_trace", "read_requests", "access_events", "trace_block_hash",
           "trace_object_id",
           "ORACLE_GENERAL", "SECTOR_BYTES"]

TRACE_FORMATS = ("oracle-general", "lines", "csv", "u32le", "u32be")
SECTOR_BYTES = 512
ORACLE_GENERAL = np.dtype([("ts", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"),
                           ("next_access_vtime", "<i8")])


def _open(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_trace(path: Path | str, fmt: str, column: str = "lbn", limit: int | None = None
               ) -> np.ndarray:
    """The block ids of a trace, in access order, as an ``int64`` array."""
    return read_requests(path, fmt, column, limit)[0]


def read_requests(path: Path | str, fmt: str, column: str = "lbn", limit: int | None = None,
                  sector_bytes: int = SECTOR_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, spans)``: each access's first block id and how many consecutive ids it covers
    (``int64`` arrays, in access order)."""
    path = Path(path)
    if fmt not in TRACE_FORMATS:
        raise UsageError(f"unknown trace format {fmt!r}; one of {', '.join(TRACE_FORMATS)}")
    spans = None
    with _open(path) as f:
        if fmt == "oracle-general":
            raw = f.read(-1 if limit is None else limit * ORACLE_GENERAL.itemsize)
            if len(raw) % ORACLE_GENERAL.itemsize:
                raise DataError(f"{path}: {len(raw)} bytes is not a whole number of "
                                f"{ORACLE_GENERAL.itemsize}-byte oracleGeneral records")
            records = np.frombuffer(raw, dtype=ORACLE_GENERAL)
            ids = records["obj_id"]
            spans = np.maximum(1, records["obj_size"].astype(np.int64) // sector_bytes)
        elif fmt in ("u32le", "u32be"):
            raw = f.read(-1 if limit is None else limit * 4)
            if len(raw) % 4:
                raise DataError(f"{path}: {len(raw)} bytes is not a whole number of uint32s")
            ids = np.frombuffer(raw, dtype="<u4" if fmt == "u32le" else ">u4")
        elif fmt == "lines":
            tokens = f.read().split()[: None if limit is None else limit]
            ids = _numbered(tokens)
        else:
            reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
            if column not in (reader.fieldnames or ()):
                raise DataError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
            tokens = [row[column].strip() for row in islice(reader, limit)]
            ids = _numbered(tokens)
    if ids.size == 0:
        raise DataError(f"{path}: no accesses in this trace")
    ids = ids.astype(np.int64)
    return ids, (np.ones_like(ids) if spans is None else spans.astype(np.int64))


def _numbered(tokens: list) -> np.ndarray:
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:  # not all integers: number the tokens in order of first use
        first: dict = {}
        return np.array([first.setdefault(t, len(first)) for t in tokens], dtype=np.int64)


def trace_block_hash(block_id: int, namespace: str = "trace") -> str:
    """A content hash stand-in for a traced block id (the contract wants a SHA-256 digest)."""
    return hashlib.sha256(f"{namespace}:{int(block_id)}".encode()).hexdigest()


def trace_object_id(namespace: str = "trace") -> str:
    """The ``object_id`` of a replayed trace: the whole trace is one object."""
    return hashlib.sha256(f"object:{namespace}".encode()).hexdigest()


def access_events(ids: Iterable[int], node_id: str = "node-0", cache_blocks: int = 1024,
                  ts0: float = 0.0, namespace: str = "trace", hit_ms: float = 0.05,
                  miss_ms: float = 5.0, spans: Iterable[int] | None = None) -> Iterator[dict]:
    """One ``block_accessed`` per access, hit or miss decided by an LRU cache of
    ``cache_blocks`` blocks; the latency is a nominal ``hit_ms`` / ``miss_ms``. The trace is one
    object (its ``object_id`` is derived from ``namespace``); an access's address is its
    ``chunk_index`` and its span (:func:`read_requests`) its ``chunk_count``."""
    cache: OrderedDict[int, None] = OrderedDict()
    object_id = trace_object_id(namespace)
    spans = iter(spans) if spans is not None else None
    for i, block in enumerate(ids):
        block = int(block)
        hit = block in cache
        if hit:
            cache.move_to_end(block)
        else:
            cache[block] = None
            if len(cache) > cache_blocks:
                cache.popitem(last=False)
        yield {"event_type": "block_accessed", "node_id": node_id, "ts": ts0 + i * 0.001,
               "block_hash": trace_block_hash(block, namespace), "cache_hit": hit,
               "latency_ms": hit_ms if hit else miss_ms, "object_id": object_id,
               "chunk_index": block, "chunk_count": int(next(spans)) if spans else 1}
