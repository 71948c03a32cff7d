"""An on-disk cache of evaluated prompts, shared by processes: one-shot `cg complete` and
`cg infill` calls on the same file skip re-evaluating the prefix they share.

Each entry is llama.cpp's own sequence-state file (the KV cache of sequence 0 and its tokens,
written and read by the engine) plus a small `.tokens` file to find the entry sharing the longest
token prefix with a new prompt without loading it. Entries live under
`<cg home>/prompt-cache/<model key>/`, the key covering the model file (path, size, mtime) and
the llama-cpp-python version (the state format). The folder is kept under a size limit, least
recently used first out.

A cache must never break what it speeds up: every failure to read or write it is at most one
warning, and the completion goes on without it. Entries appear (the two renames) and disappear
(eviction) under an exclusive lock on `.lock`, so concurrent processes never leave a `.tokens`
without its `.kv`; a lookup ignores a `.tokens` whose `.kv` is gone.

Environment: CG_PROMPT_CACHE=0 turns it off; CG_PROMPT_CACHE_MB sets the limit (default 1024).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cg_core.atomic import remove_stale_temps, temp_beside

from .errors import UsageError
from .reuse import common_prefix

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Tokens: TypeAlias = Sequence[int] | np.ndarray

MIN_TOKENS = 256  # shorter prompts are cheap to evaluate; not worth a file
MIN_GAIN = 64  # load from disk only when it saves at least this many tokens over memory
DEFAULT_LIMIT_MB = 1024


def enabled() -> bool:
    return os.environ.get("CG_PROMPT_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def limit_bytes() -> int:
    raw = os.environ.get("CG_PROMPT_CACHE_MB", str(DEFAULT_LIMIT_MB))
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not (mb >= 0 and math.isfinite(mb)):  # also NaN, inf
        raise UsageError(f"CG_PROMPT_CACHE_MB={raw!r} is not a size in MiB",
                         "Set it to a number such as 1024, or CG_PROMPT_CACHE=0 to turn the cache off.")
    return int(mb * 2**20)


class PromptCache:
    def __init__(self, folder: Path, limit: int, warn: Callable[[str], None] = lambda _m: None):
        self.folder = folder
        self.limit = limit
        self.on_warning = warn
        self._warned = False

    @classmethod
    def for_model(cls, model_path: Path, state_version: str, limit: int, warn: Callable[[str], None]) -> PromptCache:
        from . import store

        st = model_path.stat()
        key = hashlib.sha1(f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{state_version}"
                           .encode()).hexdigest()[:16]
        return cls(store.home() / "prompt-cache" / key, limit, warn)

    def warn_once(self, what: str, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            self.on_warning(f"prompt cache: {what} ({exc}); continuing without it")

    def best(self, prompt: Tokens) -> tuple[Path, int] | None:
        """The entry (its .kv file) sharing the longest token prefix with prompt, and that length."""
        import numpy as np

        best: tuple[Path, int] | None = None
        try:
            candidates = list(self.folder.glob("*.tokens"))
        except OSError as exc:
            self.warn_once(f"cannot read {self.folder}", exc)
            return None
        for tokens_file in candidates:
            kv = tokens_file.with_suffix(".kv")
            try:
                tokens = np.fromfile(tokens_file, dtype=np.int32)
            except (OSError, ValueError):
                continue  # evicted meanwhile, or unreadable: not an entry
            n = common_prefix(tokens, prompt)
            if n and (best is None or n > best[1]) and kv.exists():
                best = (kv, n)
        return best

    def touch(self, entry: Path) -> None:
        try:
            os.utime(entry)  # recently used
        except OSError:
            pass

    def save(self, tokens: np.ndarray, write_state: Callable[[Path], bool]) -> None:
        """Add an entry for `tokens`; write_state(path) writes llama.cpp's state file there."""
        import numpy as np

        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        name = hashlib.sha1(tokens.tobytes()).hexdigest()[:24]
        kv, index = self.folder / f"{name}.kv", self.folder / f"{name}.tokens"
        tmp_kv, tmp_index = temp_beside(kv), temp_beside(index)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not write_state(tmp_kv):
                raise OSError("llama.cpp could not write the state file")
            tokens.tofile(tmp_index)
            with self._lock():
                os.replace(tmp_kv, kv)
                os.replace(tmp_index, index)  # a .tokens file always has its complete .kv
                self._evict()
        except OSError as exc:
            self.warn_once(f"cannot save to {self.folder}", exc)
        finally:
            for p in (tmp_kv, tmp_index):
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass  # the folder is not usable: nothing was written there

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _evict(self) -> None:
        """Least recently used entries out until the folder is under its limit; orphans out too.
        Called with the lock held."""
        remove_stale_temps(self.folder)
        entries = []
        for kv in self.folder.glob("*.kv"):
            try:
                st = kv.stat()
            except OSError:
                continue
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, kv))
        for tokens_file in self.folder.glob("*.tokens"):
            if not tokens_file.with_suffix(".kv").exists():
                tokens_file.unlink(missing_ok=True)
        total = sum(size for _, size, _ in entries)
        for _, size, kv in sorted(entries):
            if total <= self.limit:
                break
            kv.with_suffix(".tokens").unlink(missing_ok=True)
            kv.unlink(missing_ok=True)
            total -= size
