"""The git hooks cg ships, run by the real tools: the pre-commit framework on a git clone of this
repository (with the working tree's .pre-commit-hooks.yaml), and examples/pre-commit as a
plain git hook in a real repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


class Repo:
    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env
        path.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True, check=check,
                              timeout=300)

    def write(self, name: str, data: bytes | str) -> Path:
        path = self.path / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def commit(self, message: str = "x") -> subprocess.CompletedProcess[str]:
        return self.run("git", "commit", "-q", "-m", message, check=False)


@pytest.fixture()
def env(tmp_path, tiny_gguf) -> dict[str, str]:
    """cg on PATH (this interpreter's scripts), the tiny model, a private git identity and pre-commit home."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "CG_MODEL": str(tiny_gguf), "CG_HOME": str(tmp_path / "cg-home"),
            "PRE_COMMIT_HOME": str(tmp_path / "pc-home"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(tmp_path)}


def new_repo(path: Path, env: dict[str, str]) -> Repo:
    repo = Repo(path, env)
    repo.run("git", "init", "-q", "-b", "main")
    return repo


@pytest.fixture()
def hooks_clone(tmp_path, env) -> tuple[Path, str]:
    """A git clone of this repository whose last commit holds the working tree's manifest."""
    clone = tmp_path / "cg-clone"
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], env=env, check=True,
                       capture_output=True, timeout=120)
        repo = Repo(clone, env)
    else:  # an unpacked source tree: a repository holding just the manifest
        repo = new_repo(clone, env)
    shutil.copy(ROOT / ".pre-commit-hooks.yaml", clone / ".pre-commit-hooks.yaml")
    repo.run("git", "add", ".pre-commit-hooks.yaml")
    repo.run("git", "commit", "-q", "--allow-empty", "-m", "manifest under test")
    return clone, repo.run("git", "rev-parse", "HEAD").stdout.strip()


def precommit_repo(tmp_path: Path, env: dict[str, str], clone: tuple[Path, str], hook: str) -> Repo:
    repo = new_repo(tmp_path / "project", env)
    url, rev = clone
    repo.write(".pre-commit-config.yaml", f"repos:\n- repo: {url}\n  rev: {rev}\n  hooks:\n  - id: {hook}\n")
    repo.run(sys.executable, "-m", "pre_commit", "install")
    return repo


def test_the_manifest_is_valid_for_pre_commit(env):
    manifest = str(ROOT / ".pre-commit-hooks.yaml")
    proc = subprocess.run([sys.executable, "-m", "pre_commit", "validate-manifest", manifest],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cg_check_blocks_a_marker_and_passes_binary_and_latin1(tmp_path, env, hooks_clone):
    repo = precommit_repo(tmp_path, env, hooks_clone, "cg-check")
    repo.write("app.py", "def f():\n    # cg: fill\n")
    repo.write("blob.bin", b"\x00\x01\x02 # cg: fill\n")
    repo.write("latin.py", "nom = 'caf\xe9'\n".encode("latin-1"))
    repo.run("git", "add", "-A")
    blocked = repo.commit("with marker")
    said = blocked.stdout + blocked.stderr
    assert blocked.returncode != 0 and "app.py:2" in said
    assert "blob.bin" not in said and "latin.py" not in said
    repo.write("app.py", "def f():\n    return 1\n")
    repo.run("git", "add", "-A")
    done = repo.commit("clean")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no `cg: fill` markers left" in done.stderr and "Passed" in done.stderr


def test_cg_fill_fills_and_stops_the_commit_for_review(tmp_path, env, hooks_clone):
    repo = precommit_repo(tmp_path, env, hooks_clone, "cg-fill")
    repo.write("app.py", "def f(a):\n    # cg: fill\n    return a\n")
    repo.write("latin.py", "nom = 'caf\xe9'\n".encode("latin-1"))
    repo.run("git", "add", "-A")
    stopped = repo.commit("fill")
    assert stopped.returncode != 0 and "files were modified by this hook" in stopped.stdout + stopped.stderr
    text = (repo.path / "app.py").read_text()
    assert "cg: fill" not in text and text.startswith("def f(a):\n    ") and text.endswith("\n    return a\n")
    assert (repo.path / "latin.py").read_bytes() == "nom = 'caf\xe9'\n".encode("latin-1")


def test_cg_fill_refuses_a_model_without_fim(tmp_path, env, hooks_clone, bundled_gguf):
    """No CodeGemma installed: the hook stops the commit instead of filling code with the general
    Gemma 270M (and -q does not hide why)."""
    env = {**env, "CG_MODEL": str(bundled_gguf)}
    repo = Repo(precommit_repo(tmp_path, env, hooks_clone, "cg-fill").path, env)
    repo.write("app.py", "def f(a):\n    # cg: fill\n    return a\n")
    repo.run("git", "add", "-A")
    stopped = repo.commit("fill")
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0 and "has no fill-in-the-middle tokens" in out and "cg download codegemma-2b" in out
    assert (repo.path / "app.py").read_text() == "def f(a):\n    # cg: fill\n    return a\n"


@pytest.fixture()
def hooked(tmp_path, env) -> Repo:
    repo = new_repo(tmp_path / "plain", env)
    hook = repo.path / ".git" / "hooks" / "pre-commit"
    shutil.copy(ROOT / "examples" / "pre-commit", hook)
    hook.chmod(0o755)
    repo.write("base.py", "x = 1\n")
    repo.run("git", "add", "-A")
    assert repo.commit("base").returncode == 0
    return repo


def test_plain_hook_fills_a_spaced_name_and_skips_binary(hooked):
    hooked.write("my file.py", "def f():\n    # cg: fill\n")
    hooked.write("blob.bin", b"\x00# cg: fill\n")
    hooked.run("git", "add", "-A")
    done = hooked.commit("fill")
    assert done.returncode == 0, done.stderr
    committed = hooked.run("git", "show", "HEAD:my file.py").stdout
    assert "cg: fill" not in committed and committed.startswith("def f():\n    ")
    assert hooked.run("git", "show", "HEAD:blob.bin").stdout == "\x00# cg: fill\n"
    assert hooked.run("git", "status", "--porcelain").stdout == ""  # nothing left unstaged


def test_plain_hook_never_stages_what_was_not_staged(hooked):
    hooked.write("part.py", "def g():\n    # cg: fill\n")
    hooked.run("git", "add", "part.py")
    hooked.write("part.py", "def g():\n    # cg: fill\n\nUNSTAGED = True\n")
    refused = hooked.commit("partial")
    assert refused.returncode != 0 and "part.py has unstaged changes" in refused.stderr
    assert hooked.run("git", "show", ":part.py").stdout == "def g():\n    # cg: fill\n"
    assert (hooked.path / "part.py").read_text() == "def g():\n    # cg: fill\n\nUNSTAGED = True\n"
    assert hooked.run("git", "log", "--format=%s").stdout == "base\n"


def test_plain_hook_stops_on_cg_errors_without_reading_them_as_names(hooked, env):
    hooked.write("latin.py", "# caf\xe9\n# cg: fill\n".encode("latin-1"))  # marked, but not UTF-8
    hooked.run("git", "add", "-A")
    failed = hooked.commit("latin-1 marker")
    assert failed.returncode != 0
    assert "Error: latin.py is not valid utf-8 text" in failed.stderr and "Hint: " in failed.stderr
    assert hooked.run("git", "log", "--format=%s").stdout == "base\n"
    assert hooked.run("git", "diff", "--cached", "--name-only").stdout == "latin.py\n"
