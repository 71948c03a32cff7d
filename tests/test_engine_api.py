"""Nothing in cg or benchmarks/ reaches into llama-cpp-python's private state (issue 30): the
local engine drives llama.cpp through the C functions llama_cpp binds (cg/engine/local/context.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Llama's and its helpers' private attributes, and the state Llama.generate() resumes from.
PRIVATE = {"_ctx", "_model", "_batch", "_input_ids", "_requires_eval", "_stack", "_internals"}
WRITTEN = {"input_ids", "n_tokens"}
# Another engineer's, being fixed on its own (issue 30's benchmark note).
NOT_YET = {"benchmarks/bench_reuse_quality.py"}


def _sources() -> list[Path]:
    files = [p for d in ("cg", "cg_core", "quantize", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if str(p.relative_to(ROOT)) not in NOT_YET]


def _written(target: ast.expr) -> ast.Attribute | None:
    """The attribute an assignment target writes: x.n_tokens = ..., x.input_ids[a:b] = ..."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return target if isinstance(target, ast.Attribute) else None


def _imports_internals(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.startswith("llama_cpp._internals") for a in node.names)
    module = node.module or ""
    named = any(a.name == "_internals" for a in node.names)
    return module.startswith("llama_cpp") and ("_internals" in module or named)


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
            out.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom) and _imports_internals(node):
            out.append(f"{node.lineno}: imports llama_cpp._internals")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in (target.elts if isinstance(target, ast.Tuple) else [target]):
                    attr = _written(part)
                    # a llama_batch's own C field, filled in context.py (named `batch` there)
                    own_batch = path.name == "context.py" and isinstance(attr, ast.Attribute) \
                        and isinstance(attr.value, ast.Name) and attr.value.id == "batch"
                    if attr is not None and attr.attr in WRITTEN and not own_batch:
                        out.append(f"{node.lineno}: writes .{attr.attr}")
    return out


def test_nothing_reads_or_writes_llama_cpp_pythons_private_state():
    found = {str(p.relative_to(ROOT)): _offences(p) for p in _sources()}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_catches_what_the_landed_engine_did(tmp_path):
    """The check itself: each thing the landed engine did is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("from llama_cpp import _internals\nimport llama_cpp._internals\n"
                      "llm._ctx.close()\nllm._stack\nllm._model.vocab\nllm._batch.set_batch()\n"
                      "llm._requires_eval = True\nllm.input_ids[:n] = ids\nllm.n_tokens = 3\nllm.n_tokens += 1\n"
                      "batch.n_tokens = 1\n")
    assert len(_offences(sample)) == 11
    assert _offences(ROOT / "cg/engine/local/context.py") == []  # where batch.n_tokens is the C struct's
