"""llama.cpp's own quantizer through llama-cpp-python, with its log captured for errors/progress."""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path
from typing import Callable

from cg import llama_log
from cg.errors import QuantizeError

# llama_ftype values (llama.h); the names are cg's --type values.
FTYPES = {
    "q8_0": 7,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_m": 17,
    "q6_k": 18,
}
# llama.cpp logs one line per tensor: "[  12/ 164]  blk.1.attn_q.weight - [ 2048, 2048, ...]"
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def quantize_gguf(src: Path, dst: Path, qtype: str, *, threads: int | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> None:
    """Quantize src (an F32/F16/BF16 GGUF) to dst. dst is written by llama.cpp directly."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.nthread = threads or os.cpu_count() or 1

    def on_text(text: str) -> None:
        match = _TENSOR_LINE.search(text)
        if match and on_progress:
            on_progress(int(match.group(1)), int(match.group(2)))

    with llama_log.capture(on_text=on_text) as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        reason = log.last_error() or "llama.cpp gave no reason"
        raise QuantizeError(f"llama.cpp could not quantize {src.name} to {qtype}: {reason}",
                            "Run with CG_DEBUG=1 and --verbose to see llama.cpp's log.")
