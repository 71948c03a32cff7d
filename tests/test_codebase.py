"""Facts about the code itself: imports run one way, one module touches llama-cpp-python's
internals, and the special-token table agrees with gguf-py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_quantize_never_imports_cg():
    offenders = {p.name: sorted(n for n in imports_of(p) if n == "cg" or n.startswith("cg."))
                 for p in (ROOT / "quantize").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_engine_reaches_into_llama_cpp_python():
    private = ("._ctx", "._model", "._input_ids", "._requires_eval")
    users = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "cg").rglob("*.py"), *(ROOT / "quantize").glob("*.py")]
                   if any(attr in p.read_text(encoding="utf-8") for attr in private))
    assert users == ["cg/local.py"]


def test_the_token_table_uses_gguf_keys_and_types():
    import gguf

    from quantize import tokens

    keys = {v for k, v in vars(gguf.Keys.Tokenizer).items() if k.isupper()}
    assert all(key in keys for t in tokens.SPECIAL_TOKENS for key in tokens.metadata_keys(t))
    assert tokens.BY_NAME["fim_sep"].gguf_key == gguf.Keys.Tokenizer.FIM_SEP_ID
    assert tokens.STOP_NAMES == ("eos", "fim_pre", "fim_mid", "fim_suf", "fim_sep", "eot")


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in [*(ROOT / "cg").rglob("*.py"), *(ROOT / "quantize").glob("*.py")]}
    assert {k: v for k, v in sizes.items() if v > 500} == {}
