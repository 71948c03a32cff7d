"""The engine factory: a Request -> the engine it names (its Load), made once per process.

A server is connected to once per URL, API, key, model and context. A local model is loaded once
per file and load settings, one at a time (models are large); the engine handed out carries the
prompt cache the request asks for, so the same loaded model serves calls with and without it.
Only this module knows which engines exist; the modules above ask it for "the engine".
"""

from __future__ import annotations

from typing import Any

from cg import report, settings
from cg.engine.protocol import Engine
from cg.models import store
from cg.request import Load, Request

_remote: dict[Load, Engine] = {}
_local: dict[tuple[Any, ...], Any] = {}  # load key -> LocalEngine (at most one)
_made: dict[tuple[Any, ...], Engine] = {}  # load key + prompt-cache settings -> the engine handed out


def get_engine(request: Request) -> Engine:
    """The engine the request names: a server, else the local model, loaded once per process
    (repeated calls reuse the model and its KV cache)."""
    load = request.load
    if load.server:
        if load not in _remote:
            from cg.engine.remote.engine import connect

            _remote[load] = connect(load.server, api=load.server_api, api_key=load.api_key, model=load.model,
                                    n_ctx=load.n_ctx)
        return _remote[load]
    return _local_engine(load, request)


def _local_engine(load: Load, request: Request) -> Engine:
    from cg.engine.local import engine as local
    from cg.engine.local import prompt_cache

    resolved = store.resolve(load.model)
    key = (str(resolved.path.resolve()), load.n_ctx, load.threads, load.verbose, load.gpu_layers)
    if key not in _local:
        if resolved.bundled and not request.quiet and store.first_time("bundled"):
            report.note("using the bundled Gemma 3 270M (a general model without FIM). "
                        "For real code completion run: cg download codegemma-2b")
        _local.clear()  # one local model at a time: models are large (freed once nothing holds them)
        _made.clear()
        recorded = resolved.record.special_ids if resolved.record else None
        _local[key] = local.load(resolved.path, n_ctx=load.n_ctx, n_threads=load.threads,
                                 seed=request.sampling.seed, verbose=load.verbose, recorded_ids=recorded,
                                 gpu_layers=load.gpu_layers)
    loaded = _local[key]
    use_cache = request.prompt_cache and settings.prompt_cache_on()
    limit = settings.prompt_cache_bytes() if use_cache else 0  # read each time: a bad value is an error
    made = (*key, use_cache, limit, request.quiet)
    if made not in _made:
        cache = None
        if use_cache:
            quiet = request.quiet
            cache = prompt_cache.PromptCache.for_model(loaded.path, loaded.state_version, limit,
                                                       lambda message: report.warn(message, quiet=quiet))
        _made[made] = loaded.with_prompt_cache(cache)
    return _made[made]


def close_all() -> None:
    """Free the local model (llama.cpp's memory) and forget every engine made from it."""
    for engine in _local.values():
        engine.llm.close()
    _local.clear()
    _made.clear()


def forget() -> None:
    """Forget every engine and once-note (tests: each test is its own run); a model is freed once
    nothing holds it."""
    _local.clear()
    _made.clear()
    _remote.clear()
    report.forget()
