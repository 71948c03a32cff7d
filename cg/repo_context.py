"""Context from the repository: the git root, and the local files a Python file imports."""

from __future__ import annotations

import re
from pathlib import Path


def git_root(path: Path) -> Path | None:
    for folder in [path.resolve().parent, *path.resolve().parents]:
        if (folder / ".git").exists():
            return folder
    return None


_IMPORT = re.compile(r"^\s*import\s+(?P<names>[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)", re.M)
_FROM = re.compile(r"^\s*from\s+(?P<dots>\.*)(?P<module>[\w.]*)\s+import\s+\(?(?P<names>[\w\s,]+)", re.M)


def local_imports(path: Path) -> list[Path]:
    """Files of the repository that `path` imports, in import order (nearest first).

    Python only: `import a.b` and `from a.b import c` resolve to a/b.py or a/b/__init__.py (and
    a/b/c.py) under the file's folder or the repository root; relative imports from the file's
    package. Read with regular expressions, not ast: the file being completed rarely parses.
    Other languages give no context yet.
    """
    if path.suffix != ".py":
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
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
