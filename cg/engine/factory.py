"""The engine factory: RunOptions -> the engine they ask for, made once per process.

A server (opts.server) is connected to once per URL, API, key and model. A local model is loaded
once per file and load settings, one at a time (models are large); the engine handed out carries
the prompt cache the options ask for, so the same loaded model serves calls with and without it.
Only this module knows which engines exist; the modules above ask it for "the engine".
"""

from __future__ import annotations

import sys
from typing import Any

from cg.engine import Engine
from cg.models import store
from cg.request import RunOptions

_remote: dict[tuple[Any, ...], Engine] = {}
_local: dict[tuple[Any, ...], Any] = {}  # load key -> LocalEngine (at most one)
_made: dict[tuple[Any, ...], Engine] = {}  # load key + prompt-cache settings -> the engine handed out


def get_engine(opts: RunOptions) -> Engine:
    """The engine opts ask for: a server (opts.server), else the local model, loaded once per
    process (repeated calls reuse the model and its KV cache)."""
    if opts.server:
        key: tuple[Any, ...] = (opts.server, opts.server_api, opts.api_key, opts.model, opts.n_ctx)
        if key not in _remote:
            from cg.engine.remote.engine import connect

            _remote[key] = connect(opts.server, api=opts.server_api, api_key=opts.api_key, model=opts.model,
                                   n_ctx=opts.n_ctx)
        return _remote[key]
    return _local_engine(opts)


def _local_engine(opts: RunOptions) -> Engine:
    from cg.engine.local import engine as local
    from cg.engine.local import prompt_cache

    resolved = store.resolve(opts.model)
    key = (str(resolved.path.resolve()), opts.n_ctx, opts.threads, opts.verbose, opts.gpu_layers)
    if key not in _local:
        if resolved.bundled and not opts.quiet:
            store.notice_once("bundled", "Note: using the bundled Gemma 3 270M (a general model without FIM). "
                              "For real code completion run: cg download codegemma-2b")
        _local.clear()  # one local model at a time: models are large (freed once nothing holds them)
        _made.clear()
        recorded = resolved.record.special_ids if resolved.record else None
        _local[key] = local.load(resolved.path, n_ctx=opts.n_ctx, n_threads=opts.threads,
                                 seed=opts.sampling.seed, verbose=opts.verbose, recorded_ids=recorded,
                                 gpu_layers=opts.gpu_layers)
    loaded = _local[key]
    use_cache = opts.prompt_cache and prompt_cache.enabled()
    limit = prompt_cache.limit_bytes() if use_cache else 0  # read each time: a bad value is an error
    made = (*key, use_cache, limit, opts.quiet)
    if made not in _made:
        cache = None
        if use_cache:
            cache = prompt_cache.PromptCache.for_model(loaded.path, loaded.state_version, limit,
                                                       (lambda _m: None) if opts.quiet else _warn)
        _made[made] = loaded.with_prompt_cache(cache)
    return _made[made]


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def close_all() -> None:
    """Free the local model (llama.cpp's memory) and forget every engine made from it."""
    for engine in _local.values():
        engine.llm.close()
    _local.clear()
    _made.clear()


def forget() -> None:
    """Forget every engine (tests: each test is its own run); a model is freed once nothing holds it."""
    _local.clear()
    _made.clear()
    _remote.clear()
