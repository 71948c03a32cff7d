"""llama.cpp's own quantizer through llama-cpp-python, with its log captured for errors/progress."""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from cg_core import llama_log

from .errors import QuantizerFailed


class OutType(StrEnum):
    """Output types of a conversion (cg's --type / --quant values)."""

    Q4_K_M = "q4_k_m"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"
    Q4_K_S = "q4_k_s"
    Q5_K_M = "q5_k_m"
    Q6_K = "q6_k"
    F16 = "f16"
    BF16 = "bf16"
    F32 = "f32"

    @property
    def ftype(self) -> int:
        """llama.cpp's llama_ftype (gguf.LlamaFileType) for general.file_type and the quantizer."""
        import gguf

        return int(gguf.LlamaFileType[_FILE_TYPE[self]])

    @property
    def is_float(self) -> bool:
        return self in (OutType.F32, OutType.F16, OutType.BF16)


_FILE_TYPE = {
    OutType.Q4_K_M: "MOSTLY_Q4_K_M", OutType.Q8_0: "MOSTLY_Q8_0", OutType.Q4_0: "MOSTLY_Q4_0",
    OutType.Q4_K_S: "MOSTLY_Q4_K_S",
    OutType.Q5_K_M: "MOSTLY_Q5_K_M", OutType.Q6_K: "MOSTLY_Q6_K", OutType.F16: "MOSTLY_F16",
    OutType.BF16: "MOSTLY_BF16", OutType.F32: "ALL_F32",
}
TYPE_NAMES = [t.value for t in OutType]
# llama.cpp logs one line per tensor: "[  12/ 164]  blk.1.attn_q.weight - [ 2048, 2048, ...]"
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def quantize_gguf(src: Path, dst: Path, qtype: OutType | str, *, threads: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> None:
    """Quantize src (an F32/F16/BF16 GGUF) to dst. dst is written by llama.cpp directly."""
    import llama_cpp

    qtype = OutType(qtype)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = qtype.ftype
    params.nthread = threads or os.cpu_count() or 1

    def on_text(text: str) -> None:
        match = _TENSOR_LINE.search(text)
        if match and on_progress:
            on_progress(int(match.group(1)), int(match.group(2)))

    with llama_log.capture(on_text=on_text) as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        reason = log.last_error() or "llama.cpp gave no reason"
        raise QuantizerFailed(f"llama.cpp could not quantize {src.name} to {qtype.value}: {reason}")
