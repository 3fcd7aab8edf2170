"""Write safetensors shards tensor by tensor, and the manifest that lets a run resume.

Every output shape is known from the pruned meta model before any weight is
read, so a shard's header (names, dtypes, shapes, byte offsets) is written
first and the tensors' bytes follow one at a time: a shard is never held in
memory. A shard is written to ``NAME.partial`` and renamed when complete, and
the manifest (``depgraph-stream.json``) then records its size and sha256 under
the plan's hash. A resumed run keeps every shard whose file still matches its
manifest entry for the same plan and rewrites the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DepgraphError

__all__ = ["Entry", "write_shard", "Manifest", "MANIFEST_NAME", "file_digest"]

MANIFEST_NAME = "depgraph-stream.json"
_ALIGN = 8


@dataclass(frozen=True)
class Entry:
    """One tensor of an output shard: its header fields and a source of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterable[bytes | memoryview]]


def _header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % _ALIGN)  # safetensors pads the header with spaces to 8 bytes


def write_shard(path: Path, entries: list[Entry], metadata: dict[str, str]) -> tuple[int, str]:
    """Write one safetensors file from ``entries``; returns ``(size, sha256)`` of the file.

    Raises:
        DepgraphError: a tensor produced a different number of bytes than its header says
            (the partial file is removed).
    """
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "wb") as f:
            header = _header(entries, metadata)
            for piece in (struct.pack("<Q", len(header)), header):
                f.write(piece)
                digest.update(piece)
                size += len(piece)
            for e in entries:
                written = 0
                for piece in e.chunks():
                    f.write(piece)
                    digest.update(piece)
                    written += len(piece) if isinstance(piece, bytes) else piece.nbytes
                if written != e.nbytes:
                    raise DepgraphError(f"{e.name}: {written} bytes produced, the header says {e.nbytes}")
                size += written
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def file_digest(path: Path, chunk: int = 1 << 24) -> tuple[int, str]:
    """``(size, sha256)`` of a file, read in pieces."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while piece := f.read(chunk):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


class Manifest:
    """The shards an output folder holds for one plan: ``{file: {size, sha256}}`` under ``plan``.

    Args:
        folder: the output folder.
        plan: the hash of everything that decides the output bytes.
        resume: keep entries of an earlier run of the same plan (else start empty).
    """

    def __init__(self, folder: Path, plan: str, resume: bool) -> None:
        self.path = folder / MANIFEST_NAME
        self.plan = plan
        self.shards: dict[str, dict[str, object]] = {}
        if resume and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except ValueError:
                data = {}
            if data.get("plan") == plan:
                self.shards = dict(data.get("shards", {}))

    def is_done(self, file: str) -> bool:
        """Whether ``file`` exists and still has the size and sha256 recorded for it."""
        entry = self.shards.get(file)
        path = self.path.parent / file
        if entry is None or not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
        return file_digest(path)[1] == entry.get("sha256")

    def add(self, file: str, size: int, sha256: str) -> None:
        """Record a finished shard (the manifest on disk is replaced atomically)."""
        self.shards[file] = {"size": size, "sha256": sha256}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"plan": self.plan, "shards": self.shards}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
