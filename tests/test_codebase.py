"""Facts about the code itself: imports run one way (llama-cpp-python's internals: test_engine_api.py),
the layers above the engines never ask which engine they have, and the special-token table agrees
with gguf-py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cg", "cg_core", "quantize")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def importers(package: str, wanted: tuple[str, ...]) -> dict[str, list[str]]:
    """Files of package that import any module of wanted (or a module inside one)."""
    out = {}
    for path in modules(package):
        hits = sorted(n for n in imports_of(path) if any(n == w or n.startswith(w + ".") for w in wanted))
        if hits:
            out[str(path.relative_to(ROOT))] = hits
    return out


def test_imports_run_one_way():
    assert importers("quantize", ("cg",)) == {}
    assert importers("cg_core", ("cg", "quantize")) == {}


def test_quantize_is_conversion_only():
    """cg takes its runtime helpers (atomic writes, the token table, llama.cpp's log) from cg_core,
    and from quantize only the conversion pipeline, its output types and its errors."""
    allowed = {"quantize.convert", "quantize.llama_quant", "quantize.errors"}
    used = {name for names in importers("cg", ("quantize",)).values() for name in names}
    assert {name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in allowed else name for name in used} <= allowed
    assert not (ROOT / "quantize" / "atomic.py").exists() and not (ROOT / "quantize" / "synthetic.py").exists()


# Which of cg's parts may import which: each names every part it uses, all of them lower in the
# list, so no two parts import each other (and no circle runs through several). A part is a
# package (cg/engine/) or a top-level module (cg/complete.py).
LOWER = ("cg.errors", "cg.settings", "cg.report", "cg.request")
ALLOWED = {
    "cg.errors": set(),
    "cg.settings": {"cg.errors"},
    "cg.report": {"cg.errors", "cg.settings"},
    "cg.request": {"cg.errors", "cg.settings"},
    "cg.output": set(),
    "cg.files": {*LOWER},
    "cg.models": {*LOWER},
    "cg.engine": {*LOWER, "cg.models"},
    "cg.prompt": {*LOWER, "cg.models", "cg.engine"},
    "cg.complete": {*LOWER, "cg.models", "cg.engine", "cg.prompt", "cg.output"},
    "cg.infill": {*LOWER, "cg.models", "cg.engine", "cg.prompt", "cg.output", "cg.files", "cg.complete"},
    "cg.evaluate": {*LOWER, "cg.models", "cg.engine", "cg.complete"},
    "cg.serve": {*LOWER, "cg.models", "cg.engine", "cg.prompt", "cg.output", "cg.complete"},
    "cg.cli": {*LOWER, "cg.models", "cg.engine", "cg.prompt", "cg.output", "cg.files", "cg.complete", "cg.infill",
               "cg.evaluate", "cg.serve"},
    "cg.entry": {"cg.errors", "cg.cli"},
    "cg.__main__": {"cg.entry"},
    "cg.__init__": set(),
}


def part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_each_part_imports_only_the_parts_below_it():
    found: dict[str, set[str]] = {}
    for path in modules("cg"):
        me = part(".".join(path.relative_to(ROOT).with_suffix("").parts))
        assert me in ALLOWED, f"{path.relative_to(ROOT)}: a new part of cg; say in ALLOWED what it may import"
        used = {part(n) for n in imports_of(path) if n.startswith("cg.")} - {me}
        found.setdefault(me, set()).update(used - ALLOWED[me])
    assert {k: sorted(v) for k, v in found.items() if v} == {}


def test_the_layers_above_the_engines_never_import_one():
    """Only the factory knows which engines exist (and doctor, which diagnoses them)."""
    engines = ("cg.engine.local", "cg.engine.remote")
    above = [p for p in modules("cg") if "engine" not in p.parts and p.name != "doctor.py"]
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in imports_of(p) if n.startswith(engines)) for p in above}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_token_table_uses_gguf_keys_and_types():
    import gguf

    from cg_core import tokens

    keys = {v for k, v in vars(gguf.Keys.Tokenizer).items() if k.isupper()}
    assert all(key in keys for t in tokens.SPECIAL_TOKENS for key in tokens.metadata_keys(t))
    assert tokens.BY_NAME["fim_sep"].gguf_key == gguf.Keys.Tokenizer.FIM_SEP_ID
    assert tokens.STOP_NAMES == ("eos", "fim_pre", "fim_mid", "fim_suf", "fim_sep", "eot")


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for package in PACKAGES for p in modules(package)}
    assert {k: v for k, v in sizes.items() if v > 500} == {}


def test_classes_stay_small():
    """No class over ~150 lines: an engine or a dialect fits in a reader's head."""
    long = {}
    for package in PACKAGES:
        for path in modules(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 150:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}


def test_one_request_type_from_the_cli_to_the_engine():
    """complete(prefix, suffix, request, engine) and its kin: every per-completion setting travels
    in the one Request, never as loose keywords or **kwargs."""
    import inspect

    from cg import complete, infill

    for fn, first in ((complete.complete, ["prefix", "suffix"]), (complete.stream_complete, ["prefix", "suffix"]),
                      (complete.generate, ["prompt"]), (complete.stream_generate, ["prompt"])):
        assert list(inspect.signature(fn).parameters) == [*first, "request", "engine"], fn.__name__
    assert "request" in inspect.signature(infill.infill).parameters
    variadic = [f"{path.relative_to(ROOT)}:{node.name}" for path in modules("cg")
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.args.kwarg is not None]
    assert variadic == ["cg/cli/flags.py:wrapper"]  # the decorator that hands Typer's values on as one Request


def test_one_event_type_and_one_collector():
    """The stream has one shape (engine.Event) from the decode loop to the CLI and cg serve, and its
    text is joined in one place (the decode loop's Completion)."""
    from cg import complete, engine

    assert complete.Event is engine.Event and complete.Completion is engine.Completion
    joins = [str(p.relative_to(ROOT)) for p in modules("cg") if '"".join(parts)' in p.read_text(encoding="utf-8")]
    assert joins == ["cg/engine/decode.py"]
