"""Reading a safetensors checkpoint folder one tensor at a time, counting what is held.

A Hugging Face checkpoint is ``config.json`` plus either one ``model.safetensors``
or shards listed by ``model.safetensors.index.json``. Each shard is an 8-byte
little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets}}`` and the raw bytes. :class:`Checkpoint` parses only the headers,
so shapes, dtypes and byte ranges are known before any weight is read;
:meth:`Checkpoint.load` materialises single tensors through ``safe_open``
(memory-mapped) and charges them to a :class:`MemoryLedger`, which refuses to
go over the budget and records the peak.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DepgraphError

__all__ = [
    "TensorInfo",
    "Checkpoint",
    "MemoryLedger",
    "MemoryBudgetError",
    "CheckpointError",
    "DTYPES",
    "read_header",
    "format_bytes",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

#: safetensors dtype names <-> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class CheckpointError(DepgraphError):
    """A checkpoint folder is missing files, or its files disagree with each other or the config."""


class MemoryBudgetError(DepgraphError):
    """Streaming would have to hold more weight bytes at once than ``max_memory`` allows, or more
    least-squares Gram matrices than ``calib_memory`` allows."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: shard file, dtype, shape and byte range inside the data section."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data section (after the header)
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in its shard, what materialising it reserves in the budget."""
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the stored safetensors dtype name."""
        return DTYPES[self.dtype]


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the file offset where its data starts."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path} has an unreadable safetensors header ({e})") from None
    return header, 8 + n


class MemoryLedger:
    """Bytes of weights materialised right now, their peak, and the budget they must stay under.

    Args:
        budget: the most bytes that may be held at once (None: no limit).
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.current = 0
        self.peak = 0

    def reserve(self, nbytes: int, what: str) -> None:
        """Account ``nbytes`` about to be materialised for ``what``; refuse beyond the budget."""
        if self.budget is not None and self.current + nbytes > self.budget:
            raise MemoryBudgetError(
                f"{what} needs {format_bytes(nbytes)} of weights in memory at once "
                f"(with {format_bytes(self.current)} already held), over max_memory={format_bytes(self.budget)}; "
                "raise max_memory to at least that, or keep these layers unpruned (ignored)")
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` reserved earlier, once those weights have been written and dropped."""
        self.current -= nbytes


class Checkpoint:
    """The headers of a checkpoint folder's safetensors files; reads tensors on demand.

    Args:
        folder: a folder written by ``save_pretrained`` (one file or an index + shards).
        ledger: where materialised bytes are charged (a new unlimited one by default).

    Raises:
        CheckpointError: no safetensors weights in the folder, or the index names a
            missing shard or a tensor the shard lacks.
    """

    def __init__(self, folder: str | Path, ledger: MemoryLedger | None = None) -> None:
        self.folder = Path(folder)
        self.ledger = ledger if ledger is not None else MemoryLedger()
        self.bytes_read = 0
        index = self.folder / INDEX_NAME
        if index.is_file():
            meta = json.loads(index.read_text())
            weight_map: dict[str, str] = meta.get("weight_map", {})
            self.index_metadata = {k: v for k, v in meta.get("metadata", {}).items() if k != "total_size"}
            self.sharded = True
        elif (self.folder / SINGLE_NAME).is_file():
            weight_map = {}
            self.index_metadata = {}
            self.sharded = False
        else:
            raise CheckpointError(
                f"{self.folder} has neither {INDEX_NAME} nor {SINGLE_NAME}: streaming reads safetensors "
                "checkpoints (save the model with save_pretrained(..., safe_serialization=True))")
        files = list(dict.fromkeys(weight_map.values())) if self.sharded else [SINGLE_NAME]
        self.files: list[str] = files
        self.data_start: dict[str, int] = {}
        self.file_metadata: dict[str, dict] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            path = self.folder / file
            if not path.is_file():
                raise CheckpointError(f"{INDEX_NAME} in {self.folder} lists {file}, which does not exist")
            header, start = read_header(path)
            self.data_start[file] = start
            self.file_metadata[file] = header.pop("__metadata__", {}) or {}
            for name, h in header.items():
                b, e = h["data_offsets"]
                self.tensors[name] = TensorInfo(name, file, h["dtype"], tuple(h["shape"]), int(b), int(e))
        wrong = [k for k, f in weight_map.items() if k not in self.tensors or self.tensors[k].file != f]
        if wrong:
            raise CheckpointError(f"{INDEX_NAME} in {self.folder} maps {len(wrong)} tensor(s) to shards "
                                  f"that do not hold them, e.g. {wrong[:3]}")

    @property
    def total_bytes(self) -> int:
        """Bytes of every tensor in the checkpoint, what a full load would need in memory."""
        return sum(t.nbytes for t in self.tensors.values())

    def names_in(self, file: str) -> list[str]:
        """Tensor names of one shard, in the order of their bytes in the file."""
        return sorted((n for n, t in self.tensors.items() if t.file == file), key=lambda n: self.tensors[n].begin)

    def load(self, names: list[str], what: str) -> dict[str, torch.Tensor]:
        """Materialise ``names`` on the CPU (charged to the ledger; call :meth:`release` after).

        Raises:
            MemoryBudgetError: holding them would go over the budget (nothing is read).
        """
        from safetensors import safe_open

        missing = [n for n in names if n not in self.tensors]
        if missing:
            raise CheckpointError(f"{self.folder} lacks tensor(s) {missing[:5]} needed for {what}")
        self.ledger.reserve(sum(self.tensors[n].nbytes for n in names), what)
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.tensors[n].file, []).append(n)
        for file, group in by_file.items():
            with safe_open(str(self.folder / file), framework="pt", device="cpu") as f:
                for n in group:
                    out[n] = f.get_tensor(n)
                    self.bytes_read += self.tensors[n].nbytes
        return out

    def release(self, names: list[str]) -> None:
        """Give back the ledger charge of tensors from :meth:`load` (drop the references too)."""
        self.ledger.release(sum(self.tensors[n].nbytes for n in names))

    def raw_chunks(self, name: str, chunk: int) -> Iterator[bytes]:
        """The stored bytes of ``name`` in pieces of at most ``chunk`` bytes (no tensor is built)."""
        info = self.tensors[name]
        with open(self.folder / info.file, "rb") as f:
            f.seek(self.data_start[info.file] + info.begin)
            left = info.nbytes
            while left > 0:
                piece = f.read(min(chunk, left))
                if not piece:
                    raise CheckpointError(f"{info.file} ends inside tensor {name}")
                left -= len(piece)
                self.bytes_read += len(piece)
                yield piece


def format_bytes(n: float) -> str:
    """``n`` bytes in decimal units (``"1.50 GB"``), as budgets and reports print them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
