"""Every default and environment variable is declared once (cg/settings.py), read there only, the
same in the library and the CLI, and README's tables say what the code does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cg import settings
from cg.errors import UsageError
from cg.request import Request

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_variable_as_declared():
    rows = re.findall(r"^\| `(CG_\w+)` \| (.+) \|$", README, re.M)
    assert rows == [(v.name, v.meaning) for v in settings.VARIABLES]


def test_every_cg_variable_the_code_names_is_declared():
    declared = {v.name for v in settings.VARIABLES}
    named = set()
    for path in (ROOT / "cg").rglob("*.py"):
        named |= set(re.findall(r"\bCG_[A-Z_]+\b", path.read_text(encoding="utf-8")))
    assert named <= declared, named - declared


def test_only_settings_reads_the_environment():
    """os.environ / os.getenv only in cg/settings.py (the eval sandbox builds a child's environment
    from nothing, it reads none)."""
    readers = set()
    for path in (ROOT / "cg").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.add(str(path.relative_to(ROOT)))
    assert readers == {"cg/settings.py"}


def test_readme_options_table_gives_the_declared_defaults():
    assert f"| `-n/--max-tokens N` | at most N new tokens (default {settings.DEFAULT_MAX_TOKENS}) |" in README
    assert f"default {settings.CPU_WINDOW} on the CPU" in README
    assert f"`CG_PROMPT_CACHE_MB` (default {settings.PROMPT_CACHE_MB})" in README


@given(st.sampled_from(settings.FLAG_ON + settings.FLAG_OFF), st.sampled_from(["", " ", "\t"]), st.booleans())
def test_one_rule_for_on_and_off(word, pad, upper):
    raw = pad + (word.upper() if upper else word) + pad
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CG_SPLICE", raw)
        assert settings.flag(settings.SPLICE) is (word in settings.FLAG_ON)


@pytest.mark.parametrize("raw", ["banana", "2", "nan", "on off", "y"])
def test_a_value_that_is_neither_on_nor_off_is_an_error_naming_the_variable(raw, monkeypatch):
    monkeypatch.setenv("CG_PROMPT_CACHE", raw)
    with pytest.raises(UsageError, match=f"CG_PROMPT_CACHE={re.escape(repr(raw))} is not a valid boolean"):
        settings.prompt_cache_on()
    monkeypatch.setenv("CG_PROMPT_CACHE", "")
    assert settings.prompt_cache_on()  # empty is unset: the default


def test_debug_is_never_an_error(monkeypatch):
    """Read inside the error funnel: a bad value must not raise there."""
    monkeypatch.setenv("CG_DEBUG", "banana")
    assert settings.debug() is False
    monkeypatch.setenv("CG_DEBUG", " TRUE ")
    assert settings.debug() is True


def test_the_library_reads_what_the_cli_reads(monkeypatch):
    """CG_SERVER, CG_API_KEY, CG_GPU_LAYERS, CG_MAX_PROMPT_TOKENS and CG_EXACT / CG_SPLICE worked
    only through Typer before; Request() now resolves them as `cg complete` does."""
    monkeypatch.setenv("CG_SERVER", "http://127.0.0.1:9")
    monkeypatch.setenv("CG_API_KEY", "k3y")
    monkeypatch.setenv("CG_GPU_LAYERS", "-1")
    monkeypatch.setenv("CG_MAX_PROMPT_TOKENS", "640")
    monkeypatch.setenv("CG_SPLICE", "1")
    load = Request().load
    assert (load.server, load.api_key, load.gpu_layers) == ("http://127.0.0.1:9", "k3y", -1)
    resolved = Request().resolved()
    assert (resolved.max_prompt_tokens, resolved.exact) == (640, False)
    # what the caller says wins; "" runs in this process whatever CG_SERVER says
    assert Request(server="", api_key="", gpu_layers=0).load.server is None
    assert Request(exact=True, max_prompt_tokens=100).resolved().exact is True
    assert "k3y" not in repr(load) and "127.0.0.1:9" not in repr(Request(server="http://127.0.0.1:9"))


@pytest.mark.parametrize(("name", "raw"), [("CG_GPU_LAYERS", "-2"), ("CG_GPU_LAYERS", "all"),
                                           ("CG_MAX_PROMPT_TOKENS", "15"), ("CG_MAX_PROMPT_TOKENS", "1e9"),
                                           ("CG_SERVER_TIMEOUT", "0"), ("CG_SERVER_TIMEOUT", "nan"),
                                           ("CG_PROMPT_CACHE_MB", "-1"), ("CG_PROMPT_CACHE_MB", "inf")])
def test_bad_numbers_are_one_line_errors_naming_the_variable(name, raw, monkeypatch):
    monkeypatch.setenv(name, raw)
    with pytest.raises(UsageError, match=f"^{name}="):
        Request().load  # noqa: B018
        Request().resolved()
        settings.server_timeout()
        settings.prompt_cache_bytes()


def test_contradicting_variables_are_refused_in_the_library_too(monkeypatch):
    monkeypatch.setenv("CG_EXACT", "1")
    monkeypatch.setenv("CG_SPLICE", "1")
    with pytest.raises(UsageError, match="contradict"):
        Request().resolved()
    assert Request(exact=False).resolved().exact is False  # the caller's choice needs neither
