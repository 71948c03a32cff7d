"""The one table from a tensor's dtype to how it is read: its size in bytes, its values as float32
row blocks, and (Jlama Q4 only) its blocks copied as ggml Q4_0 as they are.

Plain reads, not a memory map: mapped pages count toward the process's resident memory until
unmapped, so a mapped 2 GB embedding would show as 2 GB of RSS. Rows come a block at a time,
about CHUNK_BYTES each, so peak memory stays near one block, not the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import jlama
from .errors import ConversionError
from .tensors import TensorEntry

if TYPE_CHECKING:
    import numpy as np

CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Reader:
    data_bytes: Callable[[int], int]  # bytes holding n elements
    rows: Callable[[TensorEntry, int], Iterator[np.ndarray]]  # (entry, chunk bytes) -> float32 row blocks
    q4_0_blocks: Callable[[TensorEntry, int], Iterator[tuple[np.ndarray, int]]] | None = None
    quantized: bool = False  # Jlama's: its values need the W.qb scales


def _float_rows(np_dtype: str, size: int) -> Callable[[TensorEntry, int], Iterator[np.ndarray]]:
    def rows(entry: TensorEntry, chunk_bytes: int) -> Iterator[np.ndarray]:
        import numpy as np

        row = entry.columns
        n_rows = max(1, entry.n_elements // row)
        step = max(1, chunk_bytes // (row * size))
        with open(entry.file, "rb") as f:
            for start in range(0, n_rows, step):
                count = (min(n_rows, start + step) - start) * row
                f.seek(entry.offset + start * row * size)
                block = np.fromfile(f, dtype=np_dtype, count=count)
                if block.size != count:
                    raise ConversionError(f"{entry.file.name} ended inside tensor {entry.name}",
                                          "Download it again (an interrupted download leaves a short file).")
                # bf16 is the top half of an IEEE float32.
                values = (block.astype(np.uint32) << 16).view(np.float32) if entry.dtype == "BF16" \
                    else block.astype(np.float32)
                yield values.reshape(-1, *entry.shape[1:]) if len(entry.shape) > 1 else values

    return rows


def _sized(size: int) -> Callable[[int], int]:
    return lambda n: n * size


READERS: dict[str, Reader] = {
    "F32": Reader(_sized(4), _float_rows("<f4", 4)),
    "F16": Reader(_sized(2), _float_rows("<f2", 2)),
    "BF16": Reader(_sized(2), _float_rows("<u2", 2)),
    "F64": Reader(_sized(8), _float_rows("<f8", 8)),
    "Q4": Reader(lambda n: n // 2, jlama.dequantized_rows, jlama.q4_0_blocks, quantized=True),
    "I8": Reader(_sized(1), jlama.dequantized_rows, quantized=True),
}


def rows(entry: TensorEntry) -> Iterator[np.ndarray]:
    """The tensor as float32 blocks of whole rows, read block by block."""
    return READERS[entry.dtype].rows(entry, CHUNK_BYTES)
