"""Context from the repository: the git root, and the local files a source file imports.

Python, JavaScript/TypeScript (relative imports and requires), C/C++ (`#include "..."`) and
Rust (`mod name;`). Read with regular expressions, not parsers: the file being completed is
half-written and rarely parses.

Confined: an imported file is used only if it resolves (symlinks included) inside the git root,
or the target's folder outside git, and is a regular file. An import that climbs out of the
repository (`#include "../../../../etc/passwd"`, `from ...outside import x`, a symlink to a file
elsewhere), a FIFO, a device, a file that is not UTF-8 or is too large is skipped, with the reason,
and never read: what cg reads goes to the model, a server and the prompt cache.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cg.errors import InputError, UsageError

MAX_CONTEXT_BYTES = 1 << 20  # an imported file larger than this is not source worth a prompt
AUTO = "auto"  # --context auto: the local files the file being completed imports


@dataclass
class Skipped:
    """Imports found but not used, with why (said on stderr by the caller)."""

    items: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: Path, why: str) -> None:
        if all(p != path for p, _ in self.items):
            self.items.append((path, why))


def confinement(path: Path) -> Path:
    """The folder imports of path must resolve inside: the git root, else path's own folder."""
    root = git_root(path)
    return Path(os.path.realpath(root if root is not None else Path(os.path.abspath(path)).parent))


def _allowed(candidate: Path, root: Path, skipped: Skipped) -> bool:
    real = Path(os.path.realpath(candidate))
    if not real.is_relative_to(root):
        skipped.add(candidate, "outside the repository")
        return False
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        skipped.add(candidate, exc.strerror or "cannot be read")
        return False
    if not stat.S_ISREG(mode):
        skipped.add(candidate, "not a regular file")
        return False
    return True


def read_context(files: list[Path], skipped: Skipped) -> list[tuple[Path, str]]:
    """The UTF-8 text of each file (already confined); the others are skipped with why."""
    out = []
    for f in files:
        try:
            with open(f, "rb") as handle:
                data = handle.read(MAX_CONTEXT_BYTES + 1)
        except OSError as exc:
            skipped.add(f, exc.strerror or "cannot be read")
            continue
        if len(data) > MAX_CONTEXT_BYTES:
            skipped.add(f, f"over {MAX_CONTEXT_BYTES >> 20} MiB")
            continue
        try:
            out.append((f, data.decode("utf-8").replace("\r\n", "\n")))
        except UnicodeDecodeError:
            skipped.add(f, "not UTF-8 text")
    return out


def named_context(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """--context FILE...: the user's choice, read as given (any folder); an error names the file as
    a context file, so it is not taken for the file being completed."""
    from cg.files.textfile import read_source

    for f in files:
        if not os.path.lexists(f):
            raise InputError(f"context file not found: {f}",
                             "Check the path; `--context auto` adds the files the code imports instead.")
    return [(Path(f), read_source(f).text) for f in files]


def auto_context(path: Path | None, text: str, on_skip: Callable[[str], None]) -> list[tuple[Path, str]]:
    """--context auto: the local files `path` imports (text: its code), read and confined; each one
    skipped is said through on_skip."""
    if path is None:
        raise UsageError("--context auto needs --path FILE: the imports are found from that file's folder "
                         "and repository", "Pass --path src/app.py (the file being edited), or name the files.")
    skipped = Skipped()
    files = read_context(local_imports(path, text, skipped), skipped)
    for where, why in skipped.items:
        on_skip(f"--context auto skipped {where}: {why}")
    return files


def git_root(path: Path) -> Path | None:
    """The nearest folder above path holding .git (symlinks not followed: a link is where it lives)."""
    here = Path(os.path.abspath(path))
    for folder in here.parents:
        if (folder / ".git").exists():
            return folder
    return None


def relative_to_root(path: Path, root: Path) -> str:
    return Path(os.path.abspath(path)).relative_to(root).as_posix()


_IMPORT = re.compile(r"^\s*import\s+(?P<names>[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)", re.M)
# The imported names: in parentheses (over several lines), else up to the end of the line only.
_FROM = re.compile(r"^[ \t]*from[ \t]+(?P<dots>\.*)(?P<module>[\w.]*)[ \t]+import[ \t]+"
                   r"(?:\((?P<paren>[\w\s,]*)|(?P<line>[\w \t,]+))", re.M)


_JS_SUFFIXES = (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".mts", ".cts")
_JS_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)["'](?P<spec>\.{1,2}/[^"'\n]+)["']""")
_C_SUFFIXES = (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*"(?P<spec>[^"\n]+)"', re.M)
_RUST_MOD = re.compile(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(?P<name>\w+)\s*;", re.M)


def local_imports(path: Path, text: str | None = None, skipped: Skipped | None = None) -> list[Path]:
    """Files of the repository that `path` imports, in import order (nearest first), confined
    (see the module's doc; skipped ones land in `skipped`). text: the file's decoded text
    (default: read as UTF-8).

    Python: `import a.b` and `from a.b import c` resolve to a/b.py or a/b/__init__.py (and
    a/b/c.py) under the file's folder or the repository root; relative imports from the file's
    package. JS/TS: relative specifiers, with the usual extensions and index files (and a .ts
    file for a `.js` specifier, as TypeScript's ESM imports write them). C/C++: quoted includes
    from the file's folder, then the repository root. Rust: `mod name;` as name.rs or name/mod.rs
    beside the file (or in the folder named after it).
    """
    skipped = skipped if skipped is not None else Skipped()
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return []
    jail = confinement(path)
    if path.suffix in _JS_SUFFIXES:
        groups = [_js_files(path.parent, m["spec"]) for m in _JS_IMPORT.finditer(text)]
        return _existing(path, groups, jail, skipped)
    if path.suffix in _C_SUFFIXES:
        root = git_root(path) or path.parent
        groups = [[path.parent / m["spec"], root / m["spec"]] for m in _C_INCLUDE.finditer(text)]
        return _existing(path, groups, jail, skipped)
    if path.suffix == ".rs":
        folder = path.parent if path.stem in ("main", "lib", "mod") else path.parent / path.stem
        return _existing(path, [[folder / f"{m['name']}.rs", folder / m["name"] / "mod.rs"]
                                for m in _RUST_MOD.finditer(text)], jail, skipped)
    if path.suffix != ".py":
        return []
    me = path.resolve()
    here = me.parent
    root = git_root(path) or here
    modules: list[tuple[int, list[Path], str]] = []
    for m in _IMPORT.finditer(text):
        for name in m["names"].split(","):
            modules.append((m.start(), [here, root], name.split()[0]))
    for m in _FROM.finditer(text):
        bases = [here, root] if not m["dots"] else [_up(here, len(m["dots"]) - 1)]
        prefix = m["module"]
        if prefix:
            modules.append((m.start(), bases, prefix))
        for name in (m["paren"] or m["line"] or "").replace("\n", " ").split(","):
            if name.split():
                modules.append((m.start(), bases, f"{prefix}.{name.split()[0]}" if prefix else name.split()[0]))
    found: list[Path] = []
    for _, bases, dotted in sorted(modules, key=lambda x: x[0]):
        for base in bases:
            for candidate in _module_files(base, dotted):
                if not os.path.lexists(candidate) or not _allowed(candidate, jail, skipped):
                    continue
                resolved = candidate.resolve()
                if resolved != me and resolved not in found:
                    found.append(resolved)
    return found


def _up(folder: Path, levels: int) -> Path:
    for _ in range(levels):
        folder = folder.parent
    return folder


def _module_files(base: Path, dotted: str) -> list[Path]:
    target = base.joinpath(*dotted.split("."))
    return [target.with_suffix(".py"), target / "__init__.py"]


def _existing(path: Path, groups: list[list[Path]], jail: Path, skipped: Skipped) -> list[Path]:
    """The first existing file of each group, in order, without repeats or the file itself (one
    that may not be used ends its group: the import means that file)."""
    me, found = path.resolve(), []
    for candidates in groups:
        for candidate in candidates:
            if os.path.lexists(candidate):
                if _allowed(candidate, jail, skipped):
                    resolved = candidate.resolve()
                    if resolved != me and resolved not in found:
                        found.append(resolved)
                break
    return found


def _js_files(folder: Path, spec: str) -> list[Path]:
    target = folder / spec
    out = [target] if target.suffix else []
    if target.suffix in (".js", ".jsx", ".mjs", ".cjs"):  # TypeScript ESM: "./x.js" is x.ts
        stem = target.with_suffix("")
        out += [stem.with_suffix(s) for s in (".ts", ".tsx", ".mts", ".cts")]
    out += [target.with_name(target.name + s) for s in _JS_SUFFIXES]
    out += [target / f"index{s}" for s in _JS_SUFFIXES]
    return out
