"""What must never break: the store under concurrent writers and corruption, an unusable home,
the prompt cache failing, pipes closing early, and every input error on its documented exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cg import report
from cg.cli import main
from cg.engine.local import engine as engine_mod
from cg.models import store

from .helpers import NO_STOPS, run_cg


def long_prompt(tag: str, lines: int = 60) -> str:
    """A FIM input of several hundred tokens: over the prompt cache's 256-token threshold."""
    body = "".join(f"def {tag}_{i}(x):\n    return x * {i} + {i * 7 % 13}\n\n" for i in range(lines))
    return body + "<CURSOR>\n"


# ---------------------------------------------------------------- the store


def test_concurrent_registrations_are_all_kept(tmp_path):
    home = tmp_path / "home"
    code = textwrap.dedent("""
        import sys
        from cg.models import store
        for i in range(25):
            store.register(store.ModelRecord(name=f"m{sys.argv[1]}-{i}", path=f"/x/{sys.argv[1]}-{i}.gguf"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], env={**os.environ, "CG_HOME": str(home)})
             for n in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    data = json.loads((home / "models.json").read_text())
    assert sorted(data["models"]) == sorted(f"m{n}-{i}" for n in range(8) for i in range(25))
    assert [p.name for p in home.iterdir() if p.name.startswith(".")] == []


def test_a_corrupt_registry_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CG_HOME", str(tmp_path))
    (tmp_path / "models.json").write_text('{"models": {"a": ')
    assert main(["models"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"Error: {tmp_path / 'models.json'} is corrupt") and "mv " in err[1]


def test_an_unusable_home_still_runs_a_model_file(tmp_path, tiny_gguf):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {"CG_HOME": str(blocker / "cg")}
    ok = run_cg("complete", "-m", str(tiny_gguf), "-n", "3", *NO_STOPS, stdin=long_prompt("f"), env=env)
    assert ok.returncode == 0 and ok.stdout, ok.stderr
    # The prompt cache lives in the home: one warning, the completion unharmed.
    assert ok.stderr.count("Warning: prompt cache") == 1
    needs_home = run_cg("complete", "-n", "3", stdin="x = <CURSOR>\n", env=env)
    assert needs_home.returncode == 2
    assert needs_home.stderr.startswith(f"Error: cg cannot use {blocker / 'cg' / 'models'}")
    assert "Hint: Set CG_HOME" in needs_home.stderr


def _register(name: str, folder: Path, quant: str) -> None:
    path = folder / f"{name}.gguf"
    path.write_bytes(b"GGUF")
    store.register(store.ModelRecord(name=name, path=str(path), quant=quant))


def test_default_ranking_prefers_base_fim_models(tmp_path, monkeypatch):
    monkeypatch.setenv("CG_HOME", str(tmp_path))
    _register("codegemma-7b-it-q4_k_m", tmp_path, "q4_k_m")
    _register("codegemma-1.1-7b-it-q8_0", tmp_path, "q8_0")
    _register("codegemma-2b-q4_k_m", tmp_path, "q4_k_m")
    assert store.best_installed().name == "codegemma-2b-q4_k_m"
    _register("codegemma-7b-q4_k_m", tmp_path, "q4_k_m")
    _register("codegemma-7b-q8_0", tmp_path, "q8_0")
    assert store.best_installed().name == "codegemma-7b-q8_0"


@pytest.mark.parametrize("name, chat", [("tiny-it.gguf", True), ("codegemma-7b-it-q4_k_m.gguf", True),
                                        ("gemma-2-9b-IT.Q4_K_M.gguf", True), ("model-iter.gguf", False),
                                        ("item-store.gguf", False), ("tiny.gguf", False)])
def test_instruction_models_are_told_by_a_whole_word(tmp_path, tiny_gguf, name, chat):
    path = tmp_path / name
    os.link(tiny_gguf, path)
    assert engine_mod.load(path, n_ctx=128).info.chat is chat


# ---------------------------------------------------------------- the prompt cache


def test_an_orphan_index_is_ignored_and_cleaned_up(tmp_path, tiny_gguf):
    env = {"CG_HOME": str(tmp_path / "home")}
    text = long_prompt("g")
    first = run_cg("complete", "-m", str(tiny_gguf), "-n", "3", "--json", *NO_STOPS, stdin=text, env=env)
    assert first.returncode == 0, first.stderr
    [folder] = (tmp_path / "home" / "prompt-cache").iterdir()
    [kv] = folder.glob("*.kv")
    kv.unlink()  # what a lost race used to leave: a .tokens without its .kv
    again = run_cg("complete", "-m", str(tiny_gguf), "-n", "3", "--json", *NO_STOPS, stdin=text, env=env)
    assert again.returncode == 0 and again.stderr == ""
    assert json.loads(again.stdout)["timings"]["cached_tokens"] == 0
    assert json.loads(again.stdout)["text"] == json.loads(first.stdout)["text"]
    tokens, kvs = sorted(folder.glob("*.tokens")), sorted(folder.glob("*.kv"))
    assert [t.stem for t in tokens] == [k.stem for k in kvs] and len(kvs) == 1


def test_a_cache_folder_that_cannot_be_written_is_a_warning(tmp_path, tiny_gguf):
    home = tmp_path / "home"
    home.mkdir()
    (home / "prompt-cache").write_text("in the way")
    env = {"CG_HOME": str(home)}
    text = long_prompt("h")
    warm = run_cg("complete", "-m", str(tiny_gguf), "-n", "4", *NO_STOPS, stdin=text, env=env)
    cold = run_cg("complete", "-m", str(tiny_gguf), "-n", "4", *NO_STOPS, stdin=text,
                  env={**env, "CG_PROMPT_CACHE": "0"})
    assert warm.returncode == 0 and warm.stdout == cold.stdout and warm.stdout
    assert warm.stderr.count("\n") == 1 and warm.stderr.startswith("Warning: prompt cache: cannot save")
    quiet = run_cg("complete", "-q", "-m", str(tiny_gguf), "-n", "4", *NO_STOPS, stdin=text, env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""


# ---------------------------------------------------------------- pipes and Click


def test_a_pipe_closed_early_is_not_an_error(tiny_gguf):
    cmd = (f"{sys.executable} -m cg complete -m {tiny_gguf} -n 400 --ctx 1024 {' '.join(NO_STOPS)} "
           "--prefix 'x = ' --suffix '' | head -c 3 >/dev/null; echo ${PIPESTATUS[0]}")
    for _ in range(8):
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
        assert (proc.stdout, proc.stderr) == ("0\n", "")


def test_errors_are_mapped_with_a_click_that_lacks_no_args_is_help(capsys, monkeypatch):
    import click

    monkeypatch.delattr(click.exceptions, "NoArgsIsHelpError")  # as in Click 8.1
    assert main(["complete", "--frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("Error: No such option")


# ---------------------------------------------------------------- input errors: exit 2, nothing written


def test_an_unreadable_model_file_is_an_input_error(tmp_path, capsys):
    if os.geteuid() == 0:
        unreadable = Path("/proc/self/mem")  # a file whose read fails even for root
    else:
        unreadable = tmp_path / "locked.gguf"
        unreadable.write_bytes(b"GGUF")
        unreadable.chmod(0)
    assert main(["complete", "-m", str(unreadable), "--prefix", "x"]) == 2
    assert capsys.readouterr().err.startswith(f"Error: cannot read {unreadable}")


@pytest.mark.parametrize("bias", ["999999=1", "-1=5"])
def test_logit_bias_ids_outside_the_vocabulary(capsys, tiny_gguf, bias):
    assert main(["complete", "-m", str(tiny_gguf), "--logit-bias", bias, "--prefix", "x"]) == 2
    assert "is not in the model's vocabulary" in capsys.readouterr().err.splitlines()[0]


def test_a_bad_prompt_cache_size(monkeypatch, capsys, tiny_gguf):
    monkeypatch.setenv("CG_PROMPT_CACHE_MB", "lots")
    assert main(["complete", "-m", str(tiny_gguf), "--prefix", "x"]) == 2
    assert capsys.readouterr().err.startswith("Error: CG_PROMPT_CACHE_MB='lots' is not a size in MiB")


@pytest.fixture()
def ckpt_copy(tiny_ckpt, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "my-ckpt"))


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage, not json}"
                                                     + b"\0" * 64),
     "model.safetensors is truncated or not a safetensors"),
])
def test_malformed_checkpoint_files(ckpt_copy, tmp_path, capsys, break_it, message):
    break_it(ckpt_copy)
    out = tmp_path / "out.gguf"
    assert main(["quantize", str(ckpt_copy), "--type", "f32", "-o", str(out)]) == 2
    assert message in capsys.readouterr().err.splitlines()[0]
    assert not out.exists()


def test_a_missing_tensor_is_found_before_writing(ckpt_copy, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(ckpt_copy / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(ckpt_copy / "model.safetensors"))
    assert main(["quantize", str(ckpt_copy), "--type", "f32", "-o", str(tmp_path / "out.gguf")]) == 2
    assert "lacks 1 tensor(s) the model needs: blk.1.ffn_down.weight" in capsys.readouterr().err
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*")) == []


def test_quantize_dot_names_the_model_after_its_folder(ckpt_copy, monkeypatch, capsys):
    monkeypatch.chdir(ckpt_copy)
    assert main(["quantize", ".", "--type", "f32"]) == 0
    assert Path(capsys.readouterr().out.strip()).name == "my-ckpt-f32.gguf"
    assert store.get("my-ckpt-f32") is not None
    assert main(["models", "rm", "my-ckpt-f32"]) == 0


@pytest.mark.parametrize("ctx", [64, 100, 128, 255, 257, 300])
def test_every_allowed_context_size_works(ctx, capsys, tiny_gguf):
    """--ctx 64, 128 or 300 (the help allows x>=64) made a 256- or 512-token context while
    llama-cpp-python's arrays had the size asked: `ValueError: could not broadcast`. The context
    is asked as llama.cpp makes it, and the note names the context made."""
    made = engine_mod.context_size(ctx)
    assert made >= ctx and made % engine_mod.CTX_STEP == 0
    long_prefix = "x = 1\n" * 400
    for command in (["complete", "--prefix", long_prefix], ["generate", long_prefix]):
        report.forget()  # the note is said once per process
        code = main([*command, "-m", str(tiny_gguf), "--ctx", str(ctx), "-n", "3", *NO_STOPS])
        err = capsys.readouterr().err
        assert code == 0, err
        assert f"Note: the {made}-token context left out " in err and "Error" not in err
    engine = engine_mod.load(tiny_gguf, n_ctx=ctx)
    assert engine.info.n_ctx == made == engine.llm.n_ctx()
    engine.llm.close()
