"""Context from the repository: the git root, and the local files a source file imports.

Python, JavaScript/TypeScript (relative imports and requires), C/C++ (`#include "..."`) and
Rust (`mod name;`). Read with regular expressions, not parsers: the file being completed is
half-written and rarely parses."""

from __future__ import annotations

import os
import re
from pathlib import Path


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
_FROM = re.compile(r"^\s*from\s+(?P<dots>\.*)(?P<module>[\w.]*)\s+import\s+\(?(?P<names>[\w\s,]+)", re.M)


_JS_SUFFIXES = (".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".mts", ".cts")
_JS_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)["'](?P<spec>\.{1,2}/[^"'\n]+)["']""")
_C_SUFFIXES = (".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*"(?P<spec>[^"\n]+)"', re.M)
_RUST_MOD = re.compile(r"^\s*(?:pub(?:\([\w:]+\))?\s+)?mod\s+(?P<name>\w+)\s*;", re.M)


def local_imports(path: Path) -> list[Path]:
    """Files of the repository that `path` imports, in import order (nearest first).

    Python: `import a.b` and `from a.b import c` resolve to a/b.py or a/b/__init__.py (and
    a/b/c.py) under the file's folder or the repository root; relative imports from the file's
    package. JS/TS: relative specifiers, with the usual extensions and index files (and a .ts
    file for a `.js` specifier, as TypeScript's ESM imports write them). C/C++: quoted includes
    from the file's folder, then the repository root. Rust: `mod name;` as name.rs or name/mod.rs
    beside the file (or in the folder named after it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    if path.suffix in _JS_SUFFIXES:
        return _existing(path, [_js_files(path.parent, m["spec"]) for m in _JS_IMPORT.finditer(text)])
    if path.suffix in _C_SUFFIXES:
        root = git_root(path) or path.parent
        return _existing(path, [[path.parent / m["spec"], root / m["spec"]] for m in _C_INCLUDE.finditer(text)])
    if path.suffix == ".rs":
        folder = path.parent if path.stem in ("main", "lib", "mod") else path.parent / path.stem
        return _existing(path, [[folder / f"{m['name']}.rs", folder / m["name"] / "mod.rs"]
                                for m in _RUST_MOD.finditer(text)])
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
        for name in m["names"].replace("\n", " ").split(","):
            if name.split():
                modules.append((m.start(), bases, f"{prefix}.{name.split()[0]}" if prefix else name.split()[0]))
    found: list[Path] = []
    for _, bases, dotted in sorted(modules, key=lambda x: x[0]):
        for base in bases:
            for candidate in _module_files(base, dotted):
                resolved = candidate.resolve()
                if candidate.is_file() and resolved != me and resolved not in found:
                    found.append(resolved)
    return found


def _up(folder: Path, levels: int) -> Path:
    for _ in range(levels):
        folder = folder.parent
    return folder


def _module_files(base: Path, dotted: str) -> list[Path]:
    target = base.joinpath(*dotted.split("."))
    return [target.with_suffix(".py"), target / "__init__.py"]


def _existing(path: Path, groups: list[list[Path]]) -> list[Path]:
    """The first existing file of each group, in order, without repeats or the file itself."""
    me, found = path.resolve(), []
    for candidates in groups:
        for candidate in candidates:
            if candidate.is_file():
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
