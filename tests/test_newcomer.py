"""A newcomer's first hour: help that shows what to type, mistakes that say what to do next, and
no silent no-op. Real `cg` processes, their stderr and exit codes."""

from __future__ import annotations

import json

import pytest

from cg.models import store

from .helpers import NO_STOPS, run_cg


@pytest.mark.parametrize("command, shown", [
    (["infill"], ["FILE[:LINE[:COL]]", "marker lines"]),
    (["download"], ["[MODEL]", "codegemma-1.1-7b-it", "owner/name"]),
    (["quantize"], ["SRC_DIR", "config.json", "tokenizer.json"]),
    (["check"], ["[FILE]...", "cg: fill"]),
    (["models", "rm"], ["NAME", "cg models"]),
    (["eval", "export"], ["FILE", "published schema"]),
])
def test_help_shows_the_arguments(command, shown):
    proc = run_cg(*command, "--help")
    assert proc.returncode == 0
    for text in shown:
        assert text in proc.stdout, (text, proc.stdout)


def test_every_model_command_takes_the_same_model_options():
    """eval included: --gpu-layers, --max-prompt-tokens, --verbose, --logit-bias, --min-p ..."""
    shared = ["--model", "--ctx", "--gpu-layers", "--max-prompt-tokens", "--server", "--server-api", "--api-key",
              "--seed", "--temperature", "--top-p", "--top-k", "--min-p", "--repeat-penalty", "--max-tokens",
              "--max-time", "--logit-bias", "--exact", "--splice", "--verbose", "--quiet"]
    for command in (["complete"], ["generate"], ["infill"], ["eval", "humaneval-infill"]):
        text = run_cg(*command, "--help", env={"COLUMNS": "200"}).stdout
        assert [o for o in shared if o not in text] == [], command


def test_models_json_says_what_it_prints():
    text = run_cg("models", "--help", env={"COLUMNS": "200"}).stdout
    assert "installed models as a JSON list" in text and "stop reason" not in text


def test_a_mistyped_command_suggests_once():
    proc = run_cg("complet", stdin="x")
    assert proc.returncode == 2 and proc.stderr.count("Did you mean 'complete'?") == 1


def test_an_option_without_its_value_hints_at_its_command():
    proc = run_cg("infill", "calc.py:6", "--model")
    assert proc.returncode == 2 and "Hint: Run `cg infill --help`" in proc.stderr


def test_eval_on_a_model_without_fim_gives_evals_own_hint(bundled_gguf):
    proc = run_cg("eval", "humaneval-infill", "--limit", "3", "-m", str(bundled_gguf))
    assert proc.returncode == 2 and "has no fill-in-the-middle tokens" in proc.stderr
    assert "--require-fim" not in proc.stderr and "cg download codegemma-2b" in proc.stderr


def test_models_default_and_rm_say_what_they_take(tmp_path, tiny_gguf):
    env = {"CG_HOME": str(tmp_path)}
    for command in ("default", "rm"):
        proc = run_cg("models", command, str(tiny_gguf), env=env)
        assert proc.returncode == 2 and "takes the name of an installed model" in proc.stderr
        assert "(a path)" in proc.stderr and "cg models" in proc.stderr
    assert "CG_MODEL=" in run_cg("models", "default", str(tiny_gguf), env=env).stderr


def test_a_catalogue_name_finds_its_installed_model(tmp_path, tiny_gguf, monkeypatch):
    monkeypatch.setenv("CG_HOME", str(tmp_path))
    missing = run_cg("complete", "-m", "codegemma-2b", "--prefix", "x")
    assert missing.returncode == 2 and "Hint: Download it: cg download codegemma-2b" in missing.stderr
    store.register(store.ModelRecord(name="codegemma-2b-q4_k_m", path=str(tiny_gguf), quant="q4_k_m"))
    found = run_cg("complete", "-m", "codegemma-2b", "-n", "2", *NO_STOPS, "--json", "--prefix", "x")
    assert found.returncode == 0 and json.loads(found.stdout)["model"] == str(tiny_gguf)
    near = run_cg("complete", "-m", "codegema-2b", "--prefix", "x")
    assert near.returncode == 2 and "Did you mean codegemma-2b" in near.stderr
    assert "Installed: codegemma-2b-q4_k_m" in near.stderr
    store.register(store.ModelRecord(name="codegemma-2b-q8_0", path=str(tiny_gguf), quant="q8_0"))
    several = run_cg("complete", "-m", "codegemma-2b", "--prefix", "x")
    assert several.returncode == 2 and "installed as several models" in several.stderr


@pytest.mark.parametrize("stdin, said", [
    ("def f():\n    return 1\n", "Note: no <CURSOR> in the input: completing after the end"),
    ("def f():\n    <cursor>\n", "(found '<cursor>': the marker is case-sensitive)"),
    ("a = <CURSOR>\nb = <CURSOR>\n", "Note: 2 <CURSOR> markers in the input: the first is the cursor"),
])
def test_input_that_works_but_not_as_meant_is_said(tiny_gguf, stdin, said):
    proc = run_cg("complete", "-m", str(tiny_gguf), "-n", "2", *NO_STOPS, stdin=stdin)
    assert proc.returncode == 0 and said in proc.stderr
    quiet = run_cg("complete", "-q", "-m", str(tiny_gguf), "-n", "2", *NO_STOPS, stdin=stdin)
    assert quiet.stderr == ""


def test_infill_says_what_it_did_and_did_not_find(tmp_path, tiny_gguf):
    (tmp_path / "plain.py").write_text("x = 1\n")
    app = tmp_path / "app.py"
    app.write_text("def f():\n    # cg: fill\n\ndef g():\n    # cg: fill\n")
    args = ["-m", str(tiny_gguf), "--ctx", "512", "-n", "3", *NO_STOPS]
    plain = run_cg("infill", "plain.py", *args, cwd=tmp_path)
    assert plain.returncode == 0 and "Note: no `cg: fill` markers in plain.py" in plain.stderr
    wrote = run_cg("infill", "app.py", "--write", *args, cwd=tmp_path)
    assert wrote.returncode == 0 and "Note: filled 2 markers in app.py" in wrote.stderr
    assert run_cg("infill", "plain.py", "-q", *args, cwd=tmp_path).stderr == ""


def test_diff_and_json_together_are_refused(tmp_path, tiny_gguf):
    (tmp_path / "a.py").write_text("x = \n")
    proc = run_cg("infill", "a.py:1", "--diff", "--json", "-m", str(tiny_gguf), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: --diff and --json both given")


def test_a_model_listed_without_a_revision_has_no_trailing_at(tmp_path, tiny_gguf):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models.json").write_text(json.dumps({"default": None, "models": {"local": {
        "name": "local", "path": str(tiny_gguf), "quant": "f32", "source": "/checkpoints/hf"}}}))
    line = run_cg("models", env={"CG_HOME": str(home)}).stdout
    assert "\t/checkpoints/hf\t" in line and "hf@" not in line


@pytest.mark.parametrize("line, keys", [
    ("    return ", "A"),  # the end of a non-empty line: insert mode's cursor is past its last character
    ("    return f()", "$i"),  # the middle: before the `)`
    ("", "A"),  # an empty line
], ids=["end-of-line", "middle", "empty-line"])
def test_the_readme_editor_recipe_runs_in_vim(tmp_path, talkative_gguf, line, keys):
    """README's Vim function and mapping, run by real Vim (headless): Ctrl-G Ctrl-G typed in
    insert mode puts the completion at the cursor. Its command line is the one README's shell
    example shows. (.ci/run installs Vim.)"""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [recipe] = [b for b in re.findall(r"^```vim\n(.*?)^```", readme, re.M | re.S) if "CgComplete" in b]
    command = re.search(r"system\('([^']+)'", recipe).group(1)
    assert command.strip() in readme.split("as the mapping runs it:", 1)[1]
    vim = shutil.which("vim") or shutil.which("nvim")
    if vim is None:
        pytest.skip("no vim here (apt-get install vim-nox)")
    (tmp_path / "recipe.vim").write_text(recipe)
    f = tmp_path / "calc.py"
    before = "def add(a, b):\n"
    f.write_text(before + line + "\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CG_MODEL": str(talkative_gguf), "CG_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    typed = f'exe "normal 2G{keys}\\<C-g>\\<C-g>"'  # through the mapping, as a user types it
    script = ["-c", "source recipe.vim", "-c", "edit calc.py", "-c", typed, "-c", "wq"]
    proc = subprocess.run([vim, "-Nu", "NONE", "-i", "NONE", "-es", *script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cut = len(line) - 1 if keys == "$i" else len(line)
    # system() with a list writes the lines joined by line breaks, with none after the last
    alone = run_cg(*command.split()[1:], "calc.py", stdin=before + line[:cut] + "<CURSOR>" + line[cut:],
                   env={"CG_MODEL": str(talkative_gguf), "CG_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout.strip()
    assert f.read_text() == before + line[:cut] + alone.stdout + line[cut:] + "\n"


def test_check_with_no_files_has_nothing_to_check(tmp_path):
    """`cg check $(git ls-files '*.py')` in a repository without Python files: exit 0, not
    `Missing argument 'FILE...'` (exit 2) failing a clean repository's hook."""
    for args in ([], ["-z"]):
        proc = run_cg("check", *args, cwd=tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args


def test_an_unreachable_hub_with_nothing_cached_does_not_suggest_the_cache(tmp_path):
    """HF_HUB_OFFLINE=1 "to use what is cached" was the hint when nothing was."""
    env = {"CG_HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_TOKEN": "hf_x"}
    proc = run_cg("download", "codegemma-2b", env=env)
    assert proc.returncode == 5 and "google/codegemma-2b is not cached" in proc.stderr
    assert "HF_HUB_OFFLINE" not in proc.stderr and "Hint: Check your connection" in proc.stderr


def test_the_bundled_model_is_listed_selectable_removable_and_shared(tmp_path):
    """`-m gemma3-270m` worked and doctor named it the default, but `cg models` listed nothing,
    `cg models default/rm gemma3-270m` found no such model, and each home held its own 242 MiB copy."""
    import os
    from pathlib import Path

    a, b = {"CG_HOME": str(tmp_path / "a")}, {"CG_HOME": str(tmp_path / "b")}
    listed = json.loads(run_cg("models", "--json", env=a).stdout)
    assert [(m["name"], m["quant"], m["default"]) for m in listed] == [(store.BUNDLED_NAME, "q4_k_m", True)]
    assert listed[0]["size"] > 200 * 2**20
    assert run_cg("models", "default", store.BUNDLED_NAME, env=a).returncode == 0
    in_a = Path(listed[0]["path"])
    assert run_cg("complete", "-q", "-m", store.BUNDLED_NAME, "-n", "2", "--prefix", "x = ", env=b).returncode == 0
    [in_b] = (tmp_path / "b" / "models").glob("*.gguf")
    shared = store.shared_dir() / in_a.name  # the one copy (conftest points XDG_CACHE_HOME at a temporary folder)
    assert os.path.samefile(in_a, shared) and os.path.samefile(in_b, shared)
    assert shared.stat().st_nlink >= 3 or in_a.is_symlink()  # hard links where one file system holds all
    assert run_cg("models", env=a).stdout.startswith(f"* {store.BUNDLED_NAME}\tq4_k_m\t")
    removed = run_cg("models", "rm", store.BUNDLED_NAME, env=a)
    assert removed.returncode == 0 and removed.stderr.startswith(f"Removed {store.BUNDLED_NAME}")
    assert not in_a.exists() and shared.exists() and in_b.exists()
    again = run_cg("generate", "-q", "x =", "-n", "2", env=a)  # the fallback places it again
    assert again.returncode == 0 and os.path.samefile(in_a, shared)


def test_context_auto_works_with_path_and_json_lists_the_files(tmp_path, tiny_gguf):
    """`cg complete --context auto` said `context file not found: auto`; `--context
    pkg/nothere.py` said `file not found`, as if it were the file being filled; nothing showed
    which files auto added."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "util.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "app.py").write_text("from pkg.util import helper\n\nx = \n")
    src = "from pkg.util import helper\n\nx = <CURSOR>\n"
    args = ["-m", str(tiny_gguf), "--ctx", "512", "-n", "2", *NO_STOPS]
    no_path = run_cg("complete", "--context", "auto", *args, stdin=src, cwd=tmp_path)
    assert no_path.returncode == 2 and no_path.stderr.startswith("Error: --context auto needs --path FILE")
    for command in (["complete", "--path", "app.py"], ["infill", "app.py:3"]):
        auto = run_cg(*command, "--context", "auto", "--json", *args, stdin=src, cwd=tmp_path)
        assert auto.returncode == 0 and json.loads(auto.stdout)["context"] == ["pkg/util.py"], auto.stderr
        named = run_cg(*command, "--context", "pkg/util.py", "--json", *args, stdin=src, cwd=tmp_path)
        assert json.loads(named.stdout)["context"] == ["pkg/util.py"]
        missing = run_cg(*command, "--context", "pkg/nothere.py", *args, stdin=src, cwd=tmp_path)
        assert missing.returncode == 2 and missing.stderr.startswith("Error: context file not found: pkg/nothere.py")
        assert "--context auto" in missing.stderr
    plain = run_cg("complete", "--json", *args, stdin=src, cwd=tmp_path)
    assert json.loads(plain.stdout)["context"] == []
