"""Shared fixtures: a temporary cg home, a tiny CodeGemma-layout checkpoint and its GGUFs.

Everything runs real code: the checkpoint is random weights plus a SentencePiece tokenizer
trained here with CodeGemma's special-token ids; GGUFs come from cg's own converter and are
decoded by real llama.cpp.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cg import report
from cg.complete import Request
from cg.engine import factory as engines

from .helpers import STOP_IDS
from .synthetic import write_checkpoint


@pytest.fixture(scope="session", autouse=True)
def cg_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cg-home")
    old = {k: os.environ.get(k) for k in ("CG_HOME", "CG_MODEL", "CG_DEBUG", "PRE_COMMIT_HOME", "XDG_CACHE_HOME")}
    os.environ["CG_HOME"] = str(home)
    # Nothing a test runs writes outside its temporary folders (pre-commit keeps a store in ~/.cache,
    # the bundled model its one shared copy).
    os.environ["PRE_COMMIT_HOME"] = str(tmp_path_factory.mktemp("pre-commit-home"))
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    os.environ.pop("CG_MODEL", None)
    os.environ.pop("CG_DEBUG", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def references_load_as_cg_does():
    """The tests' llama_cpp.Llama references load weights as cg does: without llama.cpp's extra
    buffer types where cg leaves them off (a build with AMX kernels, which crash on some machines).
    Llama takes its model parameters from llama_model_default_params; nothing else changes."""
    import llama_cpp.llama_cpp as capi

    from cg.engine.local.engine import repack_weights

    if repack_weights():
        yield
        return
    original = capi.llama_model_default_params

    def without_extra_bufts():  # type: ignore[no-untyped-def]
        params = original()
        params.use_extra_bufts = False
        return params

    capi.llama_model_default_params = without_extra_bufts
    yield
    capi.llama_model_default_params = original


@pytest.fixture(autouse=True)
def notes_once_per_test():
    """cg says some notes once per process; each test is its own run."""
    report.forget()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-codegemma")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_ckpt, tmp_path_factory) -> Path:
    from quantize.convert import convert

    return convert(tiny_ckpt, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", type="f32").path


@pytest.fixture(scope="session")
def talkative_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    """The tiny checkpoint with its stop tokens' embedding rows zeroed: their logit is exactly 0,
    the largest of ~600 random logits is positive, so greedy decoding never stops before -n and
    every example has text to show, on any machine."""
    from safetensors.numpy import load_file, save_file

    folder = Path(shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("talkative") / "ckpt"))
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.embed_tokens.weight"][sorted(STOP_IDS.values())] = 0.0
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def talkative_gguf(talkative_ckpt, tmp_path_factory) -> Path:
    from quantize.convert import convert

    return convert(talkative_ckpt, tmp_path_factory.mktemp("talkative-gguf") / "talkative-f32.gguf", type="f32").path


@pytest.fixture(scope="session")
def bundled_gguf(cg_home) -> Path:
    from cg.models import store

    return store.bundled_model_path()


@pytest.fixture()
def tiny_opts(tiny_gguf) -> Request:
    return Request(model=str(tiny_gguf), n_ctx=512, threads=2, quiet=True, max_tokens=16)


@pytest.fixture()
def tiny_engine(tiny_opts):
    return engines.get_engine(tiny_opts)


@pytest.fixture(scope="session", autouse=True)
def close_models_at_exit():
    """Free llama.cpp models before the interpreter shuts down (llama-cpp-python's __del__ then fails noisily)."""
    yield
    import gc

    engines.close_all()
    engines.forget()
    gc.collect()
