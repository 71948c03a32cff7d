"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cg_core.tokens import SPECIAL_TOKENS

# CodeGemma's ids, which the tiny fixture tokenizer shares: ID["fim_sep"] == 70.
ID = {t.name: t.codegemma_id for t in SPECIAL_TOKENS}
STOP_IDS = {t.name: t.codegemma_id for t in SPECIAL_TOKENS if t.stop}
# Keeps the random tiny model from stopping at once, so the tests see text.
NO_STOPS_BIAS = {token: -1000.0 for token in STOP_IDS.values()}
NO_STOPS = [a for token in STOP_IDS.values() for a in ("--logit-bias", f"{token}=-1000")]
PROMPT_TEXT = "def fibonacci(n):\n    return n"

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def run_cg(*args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 300,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cg ARGS` as a separate process (python -m cg), stdin given, output captured."""
    return subprocess.run([sys.executable, "-m", "cg", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


def forcing(ids: list[int]) -> Processor:
    """A logits processor that makes llama.cpp's sampler pick ids[0], ids[1], ... in turn.

    Decoding stays real: llama.cpp evaluates every token and its sampler makes each choice;
    the processor only adds a large bias, like --logit-bias would.
    """
    step = {"n": 0}

    def process(_input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if step["n"] < len(ids):
            logits[ids[step["n"]]] += 1e4
        step["n"] += 1
        return logits

    return process


def scripted(engine: Any, text: str) -> Processor:
    """Forces `text` then <|file_separator|> in every generation (restarts after each FIM prompt)."""
    ids = [*engine.tokenize_text(text), ID["fim_sep"]]
    state = {"n": 0}

    def process(input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if input_ids[len(input_ids) - 1] == ID["fim_mid"]:
            state["n"] = 0  # a new FIM prompt just ended with <|fim_middle|> (never forced)
        if state["n"] < len(ids):
            logits[ids[state["n"]]] += 1e4
        state["n"] += 1
        return logits

    return process


def variant_gguf(ckpt: Path, path: Path, *, drop: tuple[str, ...] = (), user_defined: tuple[int, ...] = ()) -> Path:
    """A checkpoint converted with some special ids left out or typed USER_DEFINED,
    as GGUFs from other converters are."""
    from gguf import TokenType

    from quantize import vocab as vocab_mod
    from quantize.checkpoint import open_checkpoint
    from quantize.convert import plan_tensors, write_gguf
    from quantize.llama_quant import OutType
    from quantize.registry import lookup

    checkpoint = open_checkpoint(ckpt)
    conv = lookup(checkpoint.architecture)(checkpoint.config)
    vocab = vocab_mod.load_vocab(checkpoint.folder, checkpoint.config["vocab_size"])
    for name in drop:
        vocab.special.pop(name)
    for token in user_defined:
        vocab.types[token] = TokenType.USER_DEFINED
    write_gguf(checkpoint, conv, vocab, plan_tensors(checkpoint, conv), path, OutType.F32)
    return path


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Logits of llama.cpp for every position of tokens."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


def first_logits(engine: Any, prompt: list[int], *, exact: bool = True,
                 logit_bias: dict[int, float] | None = None) -> tuple[np.ndarray, Any]:
    """The logits of the first step after prompt (float64), and the run's Timings."""
    from cg.complete import collect
    from cg.engine import decode
    from cg.request import Request

    seen: list[np.ndarray] = []

    def capture(_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if not seen:
            seen.append(np.array(logits, dtype=np.float64))
        return logits

    request = Request(max_tokens=1, logits_processor=capture, exact=exact, logit_bias=logit_bias)
    done = collect(decode(engine, prompt, request))
    return seen[0], done.timings
