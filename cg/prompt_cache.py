"""An on-disk cache of evaluated prompts, shared by processes: one-shot `cg complete` and
`cg infill` calls on the same file skip evaluating again what they share.

Each entry is two files under `<cg home>/prompt-cache/<model key>/`:
  NAME.kv      llama.cpp's state of sequence 0 (its KV cells and their positions), as
               llama_state_seq_get_data gives it
  NAME.tokens  one JSON header line (format, model key, token count, the .kv file's size and
               BLAKE2b hash), then the prompt's tokens as int32
The key covers the model file (path, size, mtime) and the llama-cpp-python version (the state
format); the header repeats it, so an entry copied from another model's folder is foreign.
Only states computed exactly (a fresh evaluation, or an exact prefix reuse) are saved: an entry
is a state a fresh run would have, never one that was spliced.

A cache must never break what it speeds up: an entry whose header, size or hash is wrong is
removed (one warning) and the prompt is evaluated fresh; every failure to read or write the
folder is at most one warning. Entries appear (the two renames) and disappear (eviction, damage)
under an exclusive lock on `.lock`, so concurrent processes never see a `.tokens` without its
`.kv`; a lookup ignores a `.tokens` whose `.kv` is gone. Least recently used out past the limit.

Environment: CG_PROMPT_CACHE=0 turns it off; CG_PROMPT_CACHE_MB sets the limit (default 1024).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cg_core.atomic import remove_stale_temps, temp_beside

from .errors import UsageError

if TYPE_CHECKING:
    import numpy as np

FORMAT = 2
MIN_TOKENS = 256  # shorter prompts are cheap to evaluate; not worth a file
MIN_GAIN = 64  # load from disk only when it saves at least this many tokens over memory
DEFAULT_LIMIT_MB = 1024
_MAX_HEADER = 4096


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


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


@dataclass(frozen=True)
class Entry:
    kv: Path
    tokens: np.ndarray
    kv_bytes: int
    kv_hash: str


class DamagedEntry(Exception):
    """An entry whose files do not agree with its header: never loaded, removed."""


class PromptCache:
    def __init__(self, folder: Path, key: str, limit: int, warn: Callable[[str], None] = lambda _m: None):
        self.folder = folder
        self.key = key
        self.limit = limit
        self.on_warning = warn
        self._warned = False

    @classmethod
    def for_model(cls, model_path: Path, state_version: str, limit: int, warn: Callable[[str], None]) -> PromptCache:
        from . import store

        st = model_path.stat()
        key = hashlib.sha1(f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{state_version}"
                           .encode()).hexdigest()[:16]
        return cls(store.home() / "prompt-cache" / key, key, limit, warn)

    def warn_once(self, what: str, exc: BaseException | None = None) -> None:
        if not self._warned:
            self._warned = True
            self.on_warning(f"prompt cache: {what}" + (f" ({exc}); continuing without it" if exc else ""))

    def entries(self) -> Iterator[Entry]:
        """The entries whose headers are this model's (damaged or foreign ones are removed)."""
        try:
            candidates = sorted(self.folder.glob("*.tokens"))
        except OSError as exc:
            self.warn_once(f"cannot read {self.folder}", exc)
            return
        for index in candidates:
            try:
                yield self._entry(index)
            except FileNotFoundError:
                continue  # evicted meanwhile: not an entry
            except (OSError, ValueError, DamagedEntry) as exc:
                self._drop(index, exc)

    def _entry(self, index: Path) -> Entry:
        import numpy as np

        kv = index.with_suffix(".kv")
        with open(index, "rb") as f:
            line = f.readline(_MAX_HEADER)
            try:
                header = json.loads(line)
            except ValueError:
                raise DamagedEntry("unreadable header") from None
            if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("model") != self.key:
                raise DamagedEntry("another format or another model")
            tokens = np.fromfile(f, dtype="<i4")
        n, size, hashed = header.get("tokens"), header.get("kv_bytes"), header.get("kv_hash")
        if not (type(n) is int and type(size) is int and isinstance(hashed, str)) or len(tokens) != n:
            raise DamagedEntry("truncated token list")
        if kv.stat().st_size != size:
            raise DamagedEntry("state file of the wrong size")
        return Entry(kv, tokens, size, hashed)

    def read_state(self, entry: Entry) -> bytes | None:
        """The entry's state, checked against its hash; None (entry removed) if damaged."""
        try:
            data = entry.kv.read_bytes()
        except OSError as exc:
            self.warn_once(f"cannot read {entry.kv}", exc)
            return None
        if len(data) != entry.kv_bytes or digest(data) != entry.kv_hash:
            self._drop(entry.kv.with_suffix(".tokens"), DamagedEntry("state does not match its hash"))
            return None
        try:
            os.utime(entry.kv)  # recently used
        except OSError:
            pass
        return data

    def _drop(self, index: Path, why: BaseException) -> None:
        """Remove a damaged or foreign entry (one warning: it is never used)."""
        try:
            with self._lock():
                index.unlink(missing_ok=True)
                index.with_suffix(".kv").unlink(missing_ok=True)
        except OSError:
            pass
        self.warn_once(f"removed a damaged entry ({why}); evaluating the prompt fresh")

    def save(self, tokens: np.ndarray, state: bytes) -> None:
        """Add an entry: the prompt's tokens and llama.cpp's state of them."""
        import numpy as np

        tokens = np.ascontiguousarray(tokens, dtype="<i4")
        name = hashlib.sha1(tokens.tobytes()).hexdigest()[:24]
        kv, index = self.folder / f"{name}.kv", self.folder / f"{name}.tokens"
        header = {"format": FORMAT, "model": self.key, "tokens": len(tokens), "kv_bytes": len(state),
                  "kv_hash": digest(state)}
        tmp_kv, tmp_index = temp_beside(kv), temp_beside(index)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp_kv.write_bytes(state)
            with open(tmp_index, "wb") as f:
                f.write(json.dumps(header).encode() + b"\n")
                tokens.tofile(f)
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
