"""An on-disk cache of evaluated prompts, shared by processes: one-shot `cg complete` and
`cg infill` calls on the same file skip re-evaluating the prefix they share.

Each entry is llama.cpp's own sequence-state file (the KV cache of sequence 0 and its tokens,
`llama_state_seq_save_file`) plus a small `.tokens` file to find the entry sharing the longest
token prefix with a new prompt without loading it. Entries live under
`<cg home>/prompt-cache/<model key>/`, the key covering the model file (path, size, mtime) and
the llama-cpp-python version (the state format). The folder is kept under a size limit, least
recently used first out.

Environment: CG_PROMPT_CACHE=0 turns it off; CG_PROMPT_CACHE_MB sets the limit (default 1024).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

MIN_TOKENS = 256  # shorter prompts are cheap to evaluate; not worth a file
MIN_GAIN = 64  # load from disk only when it saves at least this many tokens over memory


def enabled() -> bool:
    return os.environ.get("CG_PROMPT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


class PromptCache:
    def __init__(self, folder: Path, limit_bytes: int):
        self.folder = folder
        self.limit_bytes = limit_bytes

    @classmethod
    def for_model(cls, model_path: Path) -> "PromptCache":
        import llama_cpp

        from . import store

        st = model_path.stat()
        key = hashlib.sha1(f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{llama_cpp.__version__}"
                           .encode()).hexdigest()[:16]
        limit = int(float(os.environ.get("CG_PROMPT_CACHE_MB", "1024")) * 2**20)
        return cls(store.home() / "prompt-cache" / key, limit)

    def best(self, prompt: Sequence[int]) -> tuple[Path, int] | None:
        """The entry sharing the longest token prefix with prompt, and that length."""
        best: tuple[Path, int] | None = None
        for tokens_file in self.folder.glob("*.tokens"):
            try:
                tokens = np.fromfile(tokens_file, dtype=np.int32)
            except OSError:
                continue
            n = common_prefix(tokens, prompt)
            if n and (best is None or n > best[1]):
                best = (tokens_file.with_suffix(".kv"), n)
        return best

    def restore(self, llm, entry: Path) -> int:
        """Load an entry into sequence 0 of llm; return the tokens now in its KV cache (0: failed)."""
        import llama_cpp

        capacity = llm.n_ctx()
        tokens = (llama_cpp.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        ctx = llm._ctx.ctx
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
        llm.n_tokens = 0
        read = llama_cpp.llama_state_seq_load_file(ctx, str(entry).encode(), 0, tokens, capacity,
                                                   ctypes.byref(count))
        if not read:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
            return 0
        n = int(count.value)
        llm.input_ids[:n] = np.ctypeslib.as_array(tokens)[:n]
        llm.n_tokens = n
        llm._requires_eval = True  # logits must come from a live decode
        try:
            os.utime(entry)  # recently used
        except OSError:
            pass
        return n

    def save(self, llm) -> None:
        """Write llm's current sequence 0 (its KV cache and tokens) as an entry."""
        import llama_cpp

        n = llm.n_tokens
        tokens = np.ascontiguousarray(llm.input_ids[:n], dtype=np.int32)
        name = hashlib.sha1(tokens.tobytes()).hexdigest()[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        kv, index = self.folder / f"{name}.kv", self.folder / f"{name}.tokens"
        tmp_kv, tmp_index = (p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (kv, index))
        try:
            arr = (llama_cpp.llama_token * n)(*tokens.tolist())
            if not llama_cpp.llama_state_seq_save_file(llm._ctx.ctx, str(tmp_kv).encode(), 0, arr, n):
                return
            tokens.tofile(tmp_index)
            os.replace(tmp_kv, kv)
            os.replace(tmp_index, index)  # a .tokens file always has its complete .kv
        except OSError:
            return  # a cache: a full disk or a read-only home just means no entry
        finally:
            for p in (tmp_kv, tmp_index):
                p.unlink(missing_ok=True)
        self._evict()

    def _evict(self) -> None:
        entries = []
        for kv in self.folder.glob("*.kv"):
            try:
                st = kv.stat()
            except OSError:
                continue
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, kv))
        total = sum(size for _, size, _ in entries)
        for _, size, kv in sorted(entries):
            if total <= self.limit_bytes:
                break
            kv.with_suffix(".tokens").unlink(missing_ok=True)
            kv.unlink(missing_ok=True)
            total -= size
