"""One tensor of a checkpoint as found in its safetensors header: where its bytes are, nothing read.

A leaf module: readers.py knows how to turn each dtype's bytes into float32 rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype: F32, F16, BF16, F64; or Jlama's Q4, I8
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in file
    nbytes: int
    scales: TensorEntry | None = None  # Jlama's W.qb (F32) for a Q4 / I8 tensor

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def columns(self) -> int:
        """The last dimension: values per row (1 for a scalar)."""
        return self.shape[-1] if self.shape else 1
