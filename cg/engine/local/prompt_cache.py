"""An on-disk cache of evaluated prompts, shared by processes: one-shot `cg complete` and
`cg infill` calls on the same file skip evaluating again what they share.

Each entry is two files under `<cg home>/prompt-cache/<model key>/`:
  NAME.kv      llama.cpp's state of the context that evaluated the prompt (every KV cell and
               its position: see kvcache.Cells.state), as llama_state_get_data gives it
  NAME.tokens  one JSON header line (format, model key, token count, the saving context's size,
               the .kv file's size and BLAKE2b hash), then the prompt's tokens as int32
The key covers the model file (path, size, mtime) and the llama-cpp-python version (the state
format); the header repeats it, so an entry copied from another model's folder is foreign.
Only states computed exactly (a fresh evaluation, or an exact prefix reuse) are saved: an entry
is a state a fresh run would have, never one that was spliced.

A cache must never break what it speeds up: an entry whose header, sizes, token ids (against the
vocabulary) or hash are wrong, that is not a regular file (a FIFO, a link: opened without
blocking or following it), or whose state does not hold exactly its tokens once loaded, is
removed (one warning) and the prompt is evaluated fresh; an entry longer than this context is a
larger context's and skipped. Every failure to read or write the folder is at most one warning.
The entries hold the user's code: folders are 0700 and files 0600 whatever the umask, and an
existing folder or entry that others could read is tightened when cg opens it.

Entries appear (the two renames) and disappear (eviction, damage) under an exclusive lock on
`.lock` (opened without following a link), so concurrent processes never see a `.tokens` without
its `.kv`; a lookup ignores a `.tokens` whose `.kv` is gone. Least recently used out past the limit.

Environment: CG_PROMPT_CACHE=0 turns it off; CG_PROMPT_CACHE_MB sets the limit (default 1024).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from cg_core.atomic import create_private, locked, open_regular, private_dir, remove_stale_temps, temp_beside

if TYPE_CHECKING:
    import numpy as np

FORMAT = 3  # 3: the whole context's state (2 held sequence 0's, which lacks sliding-window cells)
MIN_TOKENS = 256  # shorter prompts are cheap to evaluate; not worth a file
DISK_MIN_GAIN = 64  # load from disk only when it saves at least this many tokens over memory
_MAX_HEADER = 4096
_MAX_CTX = 1 << 24  # no context holds more tokens (kvcache moves cells past it)
_MAX_STATE = 1 << 40
_HASH = re.compile(r"[0-9a-f]{40}")


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


@dataclass(frozen=True)
class Entry:
    kv: Path
    tokens: np.ndarray
    kv_bytes: int
    kv_hash: str


@dataclass(frozen=True)
class Header:
    tokens: int
    ctx: int  # the size of the context that saved the entry
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
        self._private = False

    @classmethod
    def for_model(cls, model_path: Path, state_version: str, limit: int, warn: Callable[[str], None]) -> PromptCache:
        from cg.models import store

        st = model_path.stat()
        key = hashlib.sha1(f"{model_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{state_version}"
                           .encode()).hexdigest()[:16]
        return cls(store.home() / "prompt-cache" / key, key, limit, warn)

    def warn_once(self, what: str, exc: BaseException | None = None) -> None:
        if not self._warned:
            self._warned = True
            self.on_warning(f"prompt cache: {what}" + (f" ({exc}); continuing without it" if exc else ""))

    def _ready(self, *, create: bool) -> bool:
        """The folder (and prompt-cache/ above it) private: made 0700, or tightened once per
        process if others could read it. False where it is absent and not to be made."""
        if not create and not self.folder.is_dir():
            return False
        if not self._private:
            private_dir(self.folder.parent)
            private_dir(self.folder)
            self._private = True
        return True

    def entries(self, n_ctx: int, n_vocab: int) -> Iterator[Entry]:
        """The entries that are this model's and fit a context of n_ctx cells (damaged or
        foreign ones are removed)."""
        try:
            if not self._ready(create=False):
                return
            candidates = sorted(self.folder.glob("*.tokens"))
        except OSError as exc:
            self.warn_once(f"cannot use {self.folder}", exc)
            return
        for index in candidates:
            try:
                entry = self._entry(index, n_vocab)
            except FileNotFoundError:
                continue  # evicted meanwhile: not an entry
            except (OSError, ValueError, DamagedEntry) as exc:
                self._drop(index, exc)
                continue
            if len(entry.tokens) <= n_ctx:  # a longer one is a larger context's
                yield entry

    def _entry(self, index: Path, n_vocab: int) -> Entry:
        import numpy as np

        with os.fdopen(open_regular(index), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = _header(f.readline(_MAX_HEADER), self.key)
            if size - f.tell() != 4 * header.tokens:  # checked before reading: never more than a context
                raise DamagedEntry("a token list of the wrong length")
            tokens = np.frombuffer(f.read(4 * header.tokens), dtype="<i4")
        if len(tokens) != header.tokens:
            raise DamagedEntry("a token list of the wrong length")
        if tokens.min() < 0 or tokens.max() >= n_vocab:
            raise DamagedEntry("token ids outside the vocabulary")
        kv = index.with_suffix(".kv")
        fd = open_regular(kv)
        try:
            if os.fstat(fd).st_size != header.kv_bytes:
                raise DamagedEntry("state file of the wrong size")
        finally:
            os.close(fd)
        return Entry(kv, tokens, header.kv_bytes, header.kv_hash)

    def read_state(self, entry: Entry) -> bytes | None:
        """The entry's state, checked against its hash; None (entry removed) if damaged."""
        try:
            with os.fdopen(open_regular(entry.kv), "rb") as f:
                data = f.read(entry.kv_bytes + 1)
        except OSError as exc:
            self.warn_once(f"cannot read {entry.kv}", exc)
            return None
        if len(data) != entry.kv_bytes or digest(data) != entry.kv_hash:
            self.drop(entry, "state does not match its hash")
            return None
        try:
            os.utime(entry.kv)  # recently used
        except OSError:
            pass
        return data

    def drop(self, entry: Entry, why: str) -> None:
        """Remove an entry found damaged once loaded (one warning: it is never used)."""
        self._drop(entry.kv.with_suffix(".tokens"), DamagedEntry(why))

    def _drop(self, index: Path, why: BaseException) -> None:
        """Remove a damaged or foreign entry (one warning: it is never used). Only names are
        removed: a FIFO or link named like an entry goes, never what a link points to."""
        try:
            with self._lock():
                _remove(index)
                _remove(index.with_suffix(".kv"))
        except OSError as exc:
            self.warn_once(f"cannot use {self.folder}", exc)
        self.warn_once(f"removed a damaged entry ({why}); evaluating the prompt fresh")

    def save(self, tokens: np.ndarray, state: bytes, n_ctx: int) -> None:
        """Add an entry: the prompt's tokens and the state of the n_ctx-cell context that holds them."""
        import numpy as np

        tokens = np.ascontiguousarray(tokens, dtype="<i4")
        name = hashlib.sha1(tokens.tobytes()).hexdigest()[:24]
        kv, index = self.folder / f"{name}.kv", self.folder / f"{name}.tokens"
        header = {"format": FORMAT, "model": self.key, "tokens": len(tokens), "ctx": n_ctx,
                  "kv_bytes": len(state), "kv_hash": digest(state)}
        tmp_kv, tmp_index = temp_beside(kv), temp_beside(index)
        try:
            self._ready(create=True)
            with create_private(tmp_kv) as f:
                f.write(state)
            with create_private(tmp_index) as f:
                f.write(json.dumps(header).encode() + b"\n")
                f.write(tokens.tobytes())
            with self._lock():
                os.replace(tmp_kv, kv)
                os.replace(tmp_index, index)  # a .tokens file always has its complete .kv
                _evict(self.folder, self.limit)
        except OSError as exc:
            self.warn_once(f"cannot save to {self.folder}", exc)
        finally:
            for p in (tmp_kv, tmp_index):
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    pass  # the folder is not usable: nothing was written there

    def _lock(self) -> AbstractContextManager[None]:
        return locked(self.folder / ".lock")

def _header(line: bytes, key: str) -> Header:
    """The first line of a .tokens file, every field checked."""
    try:
        header = json.loads(line)
    except ValueError:
        raise DamagedEntry("unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("model") != key:
        raise DamagedEntry("another format or another model")
    n, ctx, size, hashed = (header.get(k) for k in ("tokens", "ctx", "kv_bytes", "kv_hash"))
    if not (_whole(ctx, _MAX_CTX) and _whole(n, ctx) and _whole(size, _MAX_STATE)
            and isinstance(hashed, str) and _HASH.fullmatch(hashed)):
        raise DamagedEntry("a header field out of range")
    return Header(n, ctx, size, hashed)


def _evict(folder: Path, limit: int) -> None:
    """Least recently used entries out until the folder is under limit bytes; orphans out too.
    Called with the folder's lock held."""
    remove_stale_temps(folder)
    entries = []
    for kv in folder.glob("*.kv"):
        try:
            st = kv.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):  # anything else is no entry (a lookup removes its name)
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, kv))
    for tokens_file in folder.glob("*.tokens"):
        if not os.path.lexists(tokens_file.with_suffix(".kv")):
            _remove(tokens_file)
    total = sum(size for _, size, _ in entries)
    for _, size, kv in sorted(entries):
        if total <= limit:
            break
        _remove(kv.with_suffix(".tokens"))
        _remove(kv)
        total -= size


def _whole(value: object, top: int) -> TypeGuard[int]:
    """A whole number in [1, top] (JSON's true is no number here)."""
    return type(value) is int and 1 <= value <= top


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a folder named like an entry, or a folder not ours: left alone
