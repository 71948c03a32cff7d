"""README.md runs as written: every command in its shell blocks is run here, in document order, in
one environment (a temporary folder with the files the examples name, a git repository, the tiny
CodeGemma-layout model installed as the default, a fake hub), or is skipped below by name with the
reason. A new example is therefore either run or consciously skipped.

```sh blocks: each line is a command (a trailing `# comment` after two spaces is dropped; `\\` joins
lines; `for ... done` is one command). ```console blocks: `$ ` lines are commands and the lines
after them are their exact stdout. ```python blocks run with the same interpreter. ```yaml blocks
that configure pre-commit are validated by pre-commit itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fakehub import FakeHub, Repo, folder_files
from .helpers import variant_gguf

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

SKIP = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' "
    "&& printf 'def add(a, b):\\n<CURSOR>\\n' | cg complete":
        "installs cg from nothing: that is .ci/run; its last part runs below as its own example",
    ". .venv/bin/activate && python -m pytest": "the test suite itself",
    "cg eval humaneval-infill --benchmark single-line --model codegemma-2b-q4_k_m --out q4.jsonl":
        "1033 tasks: minutes on the tiny model; test_eval runs the same path on a sample",
    "cg eval humaneval-infill --benchmark multi-line --limit 500 --jobs 3": "500 tasks: minutes; test_eval covers it",
    "cg eval humaneval-infill --self-check": "scores all 1033 tasks (about 45 s); test_eval self-checks a sample",
    "cg eval humaneval-infill --benchmark random-span-light --temperature 0.8 --n-samples 10 --out rs.jsonl":
        "1640 generations: minutes on the tiny model; test_eval runs --n-samples on a sample",
    "for m in codegemma-2b codegemma-1.1-2b codegemma-7b codegemma-7b-it; do\ncg download $m --quant q8_0\n"
    "cg eval humaneval-infill -b single-line --model $m-q8_0 --out $m-single-line.jsonl\n"
    "cg eval humaneval-infill -b multi-line --model $m-q8_0 --out $m-multi-line.jsonl\ndone":
        "the card's table: 4 x 6848 tasks, hours; needs the real weights to mean anything",
}
SERVER_SKIPS = {
    "cg serve codegemma-2b-q4_k_m --port 8012": "runs until Ctrl-C; test_serve runs cg serve for real",
    "cg serve --llama-server -m codegemma-2b-q4_k_m --jobs 4 --port 8080":
        "runs until Ctrl-C; test_servers runs cg serve --llama-server for real",
    "llama-server -m codegemma-7b-q4_k_m.gguf -c 32768 -np 4 -ngl 99 --host 0.0.0.0 --port 8080":
        "a 7B server; test_servers runs llama-server on the tiny model",
    "VLLM_CPU_KVCACHE_SPACE=4 python -m vllm.entrypoints.openai.api_server --model google/codegemma-7b "
    "--dtype bfloat16 --max-model-len 8192":
        "needs the real weights from the hub; test_servers runs vLLM on the tiny model",
    "cg infill src/app.py:42 --server http://gpu-box:8000/v1 --write": "a GPU box this machine cannot reach",
    "cg eval humaneval-infill -b multi-line --server http://gpu-box:8080 --jobs 4 --out 7b-multi.jsonl":
        "a GPU box this machine cannot reach; test_servers runs eval --server --jobs",
    "pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz":
        "the llama-server build: .ci/servers does it (minutes)",
    "cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B llama-build -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF":
        "the llama-server build: .ci/servers does it (minutes)",
    "cmake --build llama-build -j --target llama-server && export CG_LLAMA_SERVER=$PWD/llama-build/bin/llama-server":
        "the llama-server build: .ci/servers does it (minutes)",
}
SKIP.update(SERVER_SKIPS)

for backend in ("CUDA", "VULKAN", "METAL"):
    SKIP[f'CMAKE_ARGS="-DGGML_{backend}=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'] = (
        "rebuilds llama-cpp-python for a GPU this machine does not have (10 minutes of build each)")
# Commands whose documented exit status is not 0 (README says so beside them).
EXIT = {"cg check $(git ls-files '*.py')": 1}


@dataclass
class Example:
    kind: str  # sh, console, python, yaml
    text: str
    stdout: str | None = None  # shown in README: must match exactly


def examples(markdown: str) -> list[Example]:
    out: list[Example] = []
    for kind, body in re.findall(r"^```(sh|console|python|yaml)\n(.*?)^```", markdown, re.M | re.S):
        if kind in ("python", "yaml"):
            out.append(Example(kind, body))
        elif kind == "console":
            for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
                command, _, shown = chunk.partition("\n")
                out.append(Example(kind, command.strip(), shown))
        else:
            out += [Example(kind, c) for c in _sh_commands(body)]
    return out


def _sh_commands(body: str) -> list[str]:
    commands, pending = [], ""
    for raw in body.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s{2,}#\s.*$", "", raw).strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.startswith(("for ", "while ")) and not re.search(r"\bdone$", pending):
            continue
        commands.append(pending)
        pending = ""
    return commands


def test_the_parser_sees_every_kind_of_block():
    found = examples(README.read_text(encoding="utf-8"))
    assert {e.kind for e in found} >= {"sh", "python", "yaml"}
    assert len([e for e in found if e.kind == "sh"]) >= 20


@pytest.fixture(scope="module")
def jlama_ckpt(talkative_ckpt, tmp_path_factory) -> Path:
    """The talkative model in Jlama's Q4 layout (tokenizer.json from transformers, no tokenizer.model)."""
    from transformers import AutoTokenizer

    from . import jlama_writer

    tmp = tmp_path_factory.mktemp("readme-jlama")
    source = Path(shutil.copytree(talkative_ckpt, tmp / "source"))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp / "hf"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp / "hf" / name, source / name)
    return jlama_writer.write(source, tmp / "codegemma-2b-JQ4")


@pytest.fixture(scope="module")
def readme_hub(talkative_ckpt, jlama_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme-hub")
    gguf = variant_gguf(talkative_ckpt, tmp / "codegemma-2b-Q8_0.gguf", drop=("fim_sep", "eot"))
    with FakeHub() as hub:
        hub.repos["tjake/codegemma-2b-JQ4"] = Repo(folder_files(jlama_ckpt))
        files = folder_files(talkative_ckpt)
        hub.repos["google/codegemma-2b"] = Repo(files, gated=True, accepted_tokens={"hf_ok", "hf_..."})
        hub.repos["google/codegemma-7b"] = Repo(files, gated=True, accepted_tokens={"hf_ok", "hf_..."})
        hub.repos["someone/codegemma-2b-GGUF"] = Repo({gguf.name: gguf.read_bytes()})
        yield hub


def _workspace(root: Path, ckpt: Path, jlama: Path) -> None:
    """The files README's examples name, in a git repository."""
    src = root / "src"
    src.mkdir(parents=True)
    lines = [f"def f{i}(value):  # helper number {i}\n" if i % 3 == 0 else f"    total_{i} = value * {i} + 1\n"
             for i in range(1, 60)]
    lines[20] = "    # cg: fill\n"
    (src / "app.py").write_text("from util import helper\n" + "".join(lines))
    (src / "util.py").write_text("def helper():\n    return 1\n")
    (src / "todo.py").write_text("def later():\n    # cg: fill\n")  # a marker README's examples leave alone
    (src / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (root / "before.py").write_text("def area(r):\n    ")
    (root / "after.py").write_text("\n\nprint(area(2))\n")
    (root / "snippet.py").write_text("def add(a, b):\n<CURSOR>\n")
    (root / "file.py").write_text("import os\n\ndef list_files(folder):\n<CURSOR>\n")
    for name in ("codegemma-2b", "codegemma-7b", "my-codegemma"):
        shutil.copytree(ckpt, root / name)
    shutil.copytree(jlama, root / "codegemma-2b-JQ4")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    for args in (["git", "init", "-q"], ["git", "add", "src"], ["git", "commit", "-q", "-m", "base"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True)


def _env(root: Path, home: Path, hub: FakeHub) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "CG_HOME": str(home), "HF_HOME": str(root / ".hf"), "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_ok",
           "CG_PROMPT_CACHE": "1", "PRE_COMMIT_HOME": str(root / ".pre-commit")}
    env.pop("CG_MODEL", None)
    return env


def _missing_tool(command: str) -> str | None:
    for tool in ("jq", "git", "patch"):
        if re.search(rf"\b{tool}\b", command) and shutil.which(tool) is None:
            return tool
    return None


def test_every_readme_example_runs(tmp_path, talkative_ckpt, jlama_ckpt, readme_hub, bundled_gguf):
    root = tmp_path / "work"
    _workspace(root, talkative_ckpt, jlama_ckpt)
    env = _env(root, tmp_path / "home", readme_hub)
    # The tiny CodeGemma-layout model, installed as the best CodeGemma: examples run without --model.
    subprocess.run([sys.executable, "-m", "cg", "quantize", str(talkative_ckpt), "--type", "f32", "--name",
                    "codegemma-tiny-f32"], env=env, check=True, capture_output=True)
    found = examples(README.read_text(encoding="utf-8"))
    ran, unused_skips = [], set(SKIP)
    for example in found:
        if example.kind == "yaml":
            if "repos:" in example.text:
                _validate_precommit_config(example.text, tmp_path, env)
            continue
        if example.text in SKIP:
            unused_skips.discard(example.text)
            continue
        tool = _missing_tool(example.text)
        if tool:
            pytest.skip(f"{tool} is not installed: cannot run {example.text!r}")
        run_env = env if example.kind != "console" else _bundled_env(tmp_path, env, bundled_gguf)
        cmd = [sys.executable, "-c", example.text] if example.kind == "python" else ["bash", "-c", example.text]
        proc = subprocess.run(cmd, cwd=root, env=run_env, capture_output=True, text=True, timeout=600)
        want = EXIT.get(example.text, 0)
        assert proc.returncode == want, f"{example.text!r} exited {proc.returncode}, README says {want}:\n{proc.stderr}"
        if example.stdout is not None:  # a console block shows the output; its last line break is the block's
            assert proc.stdout.rstrip("\n") == example.stdout.rstrip("\n"), example.text
        ran.append(example.text)
    assert not unused_skips, f"SKIP names commands README no longer has: {sorted(unused_skips)}"
    assert len(ran) >= 20


def _bundled_env(tmp_path: Path, env: dict[str, str], bundled: Path) -> dict[str, str]:
    """A home with only the bundled model: what a new user's first run sees."""
    home = tmp_path / "fresh-home"
    if not home.exists():
        (home / "models").mkdir(parents=True)
        os.link(bundled, home / "models" / bundled.name)
    return {**env, "CG_HOME": str(home)}


def _validate_precommit_config(text: str, tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "readme-pre-commit-config.yaml"
    config.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "pre_commit", "validate-config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_hook_snippets_rev_is_a_commit_or_a_tag_of_cg():
    """`rev: v0.1.0` named a tag cg never had: pre-commit then fails on a copied snippet."""
    text = README.read_text(encoding="utf-8")
    revs = re.findall(r"^\s*rev: (\S+)", text, re.M)
    tags = subprocess.run(["git", "tag", "--list"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert revs and all(re.fullmatch(r"[0-9a-f]{40}", rev) or rev in tags for rev in revs), (revs, tags)
    assert "rev-parse HEAD" in text


def test_every_readme_section_cg_points_at_is_a_heading():
    """`cg doctor` said "see README: GPU install", a section README never had."""
    headings = [h.lstrip("#").strip() for h in re.findall(r"^#{2,4} .+$", README.read_text(encoding="utf-8"), re.M)]
    sources = [*(ROOT / "cg").rglob("*.py"), *(ROOT / "cg_core").rglob("*.py"), ROOT / ".pre-commit-hooks.yaml"]
    cited = {(p.name, name.strip()) for p in sources
             for name in re.findall(r"README: ([^)\";.\n]+)", p.read_text(encoding="utf-8"))}
    assert len(cited) >= 3
    assert [(f, name) for f, name in cited if not any(h.startswith(name) for h in headings)] == []
