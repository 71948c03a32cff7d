"""Commands that manage models, measure them and serve them: quantize, download, models, eval,
serve, doctor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cg import report, settings
from cg.cli.app import app, eval_app, models_app, write_result
from cg.cli.flags import (
    CtxOpt,
    ExactOpt,
    GpuLayersOpt,
    MaxPromptTokensOpt,
    ModelOpt,
    SpliceOpt,
    ThreadsOpt,
    VerboseOpt,
    exact_choice,
    int_option,
    model_options,
)
from cg.errors import UsageError
from cg.evaluate.tasks import Benchmark
from cg.request import Api, Request
from cg.settings import DEFAULT_CTX, EVAL_MAX_TOKENS
from quantize.llama_quant import OutType


def default_model_name(src_dir: Path, out_type: OutType) -> str:
    """FOLDER-TYPE, from the folder's real name (`cg quantize .` names it after the folder)."""
    return f"{src_dir.resolve().name.lower()}-{out_type.value}"


@app.command()
def quantize(
    src_dir: Annotated[Path, typer.Argument(
        metavar="SRC_DIR", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.model).")],
    type: Annotated[OutType | None, typer.Option(
        "--type", case_sensitive=False,
        help="Output type (default: q4_0 for Jlama Q4, lossless; q8_0 for Jlama I8; else q4_k_m).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Output .gguf (default: cg's model store).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name in the model store (default: FOLDER-TYPE).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Convert a CodeGemma checkpoint (or a Jlama-quantized one) to GGUF, quantized with llama.cpp.

    SRC_DIR: a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.model or
    tokenizer.json).

    Example: cg quantize ./codegemma-2b --type q8_0
    """
    from cg.models import store
    from cg.report import progress_bar
    from quantize.convert import convert, default_type

    out_type = type or default_type(src_dir)
    model_name = name or default_model_name(src_dir, out_type)
    target = output or store.ensure_dir(store.models_dir()) / f"{model_name}.gguf"
    result = convert(src_dir, target, type=out_type, force=force, threads=threads, progress=progress_bar)
    if note := result.note():
        report.say(note)
    if output is None:
        from cg.models.hub import special_ids_to_record

        store.register(store.ModelRecord(name=model_name, path=str(result.path), quant=out_type.value,
                                         source=result.source, special_ids=special_ids_to_record(result.path,
                                                                                                 announce=False)))
    write_result(f"{result.path}\n")


@app.command()
def download(
    model: Annotated[str | None, typer.Argument(
        metavar="[MODEL]", help="codegemma-2b (default), codegemma-1.1-2b, codegemma-7b, codegemma-7b-it, "
                                "codegemma-1.1-7b-it, or any hub repo id.")] = None,
    quant: Annotated[OutType | None, typer.Option(
        "--quant", case_sensitive=False,
        help="Output type (default: q4_k_m; for a Jlama checkpoint q4_0, a lossless copy, or q8_0).")] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="Hub token (default: HF_TOKEN, then `hf auth login`'s).")] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default: main).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an installed model of the same name.")] = False,
    keep_source: Annotated[bool, typer.Option(
        "--keep-source", help="Keep the safetensors checkpoint beside the GGUF in cg's store.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name in the model store (default: MODEL-QUANT).")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Download CodeGemma from the Hugging Face hub, ready for `cg complete` (prints its name).

    MODEL: codegemma-2b (default), codegemma-1.1-2b, codegemma-7b, codegemma-7b-it,
    codegemma-1.1-7b-it, or any hub repo id (owner/name).

    Example: cg download codegemma-2b --quant q8_0
    """
    from cg.models.hub import download as fetch

    record = fetch(model, quant=quant.value if quant else None, token=token, revision=revision, force=force,
                   keep_source=keep_source, name=name, threads=threads)
    report.say(f"Installed {record.name}: {record.path}")
    write_result(f"{record.name}\n")


BenchmarkOpt = Annotated[Benchmark, typer.Option(
    "--benchmark", "-b", help="single-line 1033 tasks, multi-line 5815, random-span 1640, random-span-light 164.")]
LimitOpt = Annotated[int | None, int_option("--limit", min=1, help="Run N tasks spread evenly over the set.")]


@eval_app.command("humaneval-infill")
@model_options
def eval_humaneval_infill(
    benchmark: BenchmarkOpt = Benchmark.SINGLE_LINE,
    limit: LimitOpt = None,
    jobs: Annotated[int | None, int_option(
        "--jobs", "-j", min=1,
        help="Programs scored at once (default: cores-1, at most 4); with --server, completions in flight too.",
    )] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Per-task results as JSON lines (- for stdout).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted --out file.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out file.")] = False,
    self_check: Annotated[bool, typer.Option(
        "--self-check", help="Fill each task with its canonical text (must score 100%).")] = False,
    stop_words: Annotated[bool, typer.Option(
        "--stop-words", help="Also stop at HumanEval's usual words (\\nclass, \\ndef, \\n#, \\nif).")] = False,
    repair_newline: Annotated[bool, typer.Option(
        "--repair-newline", help="Not the official scoring: add the line break a whole-line answer lacks.")] = False,
    n_samples: Annotated[int, int_option(
        "--n-samples", min=1, help="Samples per task (with --temperature > 0): reports pass@k too.")] = 1,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds each test program may run.")] = 10.0,
    memory: Annotated[int, int_option("--memory-mb", min=64, help="Memory limit of each test program.")] = 1024,
    max_tokens: Annotated[int, int_option("--max-tokens", "-n", min=1, help="Most tokens to generate.")]
    = EVAL_MAX_TOKENS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    *,
    run: Request,
) -> None:
    """HumanEval infilling pass@1 (pass@k) through the same path as `cg complete`, scored as the
    official harness scores it (tests run sandboxed)."""
    from dataclasses import replace

    from cg.evaluate.humaneval import EvalOptions, default_jobs, evaluate
    from cg.evaluate.sandbox import Limits

    if resume and force:
        raise UsageError("--resume and --force contradict each other", "Pass one of them.")
    if (resume or force) and out is None:
        raise UsageError("--resume and --force need --out FILE")
    width = jobs or default_jobs()
    eo = EvalOptions(benchmark=benchmark, limit=limit, jobs=width, out=out, resume=resume, force=force,
                     self_check=self_check, stop_words=stop_words, repair_newline=repair_newline, n_samples=n_samples,
                     limits=Limits(timeout=timeout, memory_mb=memory), gen_jobs=width if run.server else 1,
                     run=replace(run, max_tokens=max_tokens))
    summary = evaluate(eo, emit=write_result)  # with -o -: a reader that goes away ends cg quietly
    text = json.dumps(summary.to_json()) + "\n" if as_json else summary.table()
    if out is not None and str(out) == "-":
        sys.stderr.write(text)
    else:
        write_result(text)


@eval_app.command("export")
def eval_export(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write the tasks (- for stdout).")],
    benchmark: BenchmarkOpt = Benchmark.SINGLE_LINE,
    limit: LimitOpt = None,
) -> None:
    """Write a benchmark's tasks in the published schema (identical to the published file)."""
    from cg.evaluate.tasks import export_lines, load, spread
    from cg_core.atomic import write_atomic

    data = export_lines(spread(load(benchmark), limit))
    if str(file) == "-":
        write_result(data)
    else:
        write_atomic(file, data)


@models_app.callback()
def models_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option(
        "--json", help="Print the installed models as a JSON list.")] = False) -> None:
    """List installed models (* marks the one used by default)."""
    if ctx.invoked_subcommand is not None:
        return
    from cg.models import store

    records = store.available()  # the bundled model too, even before its first use places it here
    chosen = store.default_name()
    rows: list[dict[str, Any]] = [
        {"name": r.name, "quant": r.quant, "size": r.size, "source": r.source, "revision": r.revision,
         "path": r.path, "default": chosen == r.name} for r in records]
    if as_json:
        write_result(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        report.say("No models installed; cg uses the bundled Gemma 3 270M. Get CodeGemma: cg download codegemma-2b")
        return
    for row in rows:
        mark = "*" if row["default"] else " "
        size = f"{row['size'] / 2**20:.0f} MiB"
        src = (row["source"] + (f"@{row['revision'][:10]}" if row["revision"] else "")) if row["source"] else "-"
        write_result(f"{mark} {row['name']}\t{row['quant'] or '-'}\t{size}\t{src}\t{row['path']}\n")


@models_app.command("rm")
def models_rm(name: Annotated[str, typer.Argument(metavar="NAME", help="An installed model's name (cg models).")]
              ) -> None:
    """Remove an installed model and its file. NAME: as `cg models` lists it."""
    from cg.models import store

    rec = store.remove(name)
    again = " (the bundled model: cg places it again when it falls back to it)" if rec.bundled else ""
    report.say(f"Removed {rec.name}{again}")


@models_app.command("default")
def models_default(name: Annotated[str, typer.Argument(metavar="NAME", help="An installed model's name (cg models).")]
                   ) -> None:
    """Use NAME when no --model or CG_MODEL is given. NAME: as `cg models` lists it."""
    from cg.models import store

    store.set_default(name)
    report.say(f"Default model: {name}")




@app.command()
def serve(
    model: Annotated[str | None, typer.Argument(
        metavar="[MODEL]", help="Installed model name or GGUF path (default: as complete).")] = None,
    model_opt: ModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    jobs: Annotated[int, int_option(
        "--jobs", "-j", min=1, help="Parallel slots: 1 for cg's own server (for now); with --llama-server, for "
                                    "cg eval --jobs.")] = 1,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (beyond loopback: set a key).")]
    = "127.0.0.1",
    port: Annotated[int, int_option("--port", min=1, max=65535)] = 8080,
    threads: ThreadsOpt = None,
    gpu_layers: GpuLayersOpt = None,
    api_key_file: Annotated[Path | None, typer.Option(
        "--api-key-file", help="File holding the key clients must send as `Authorization: Bearer KEY` "
                               f"(default: env {settings.API_KEY.name}; neither: no key).")] = None,
    llama_server: Annotated[bool, typer.Option(
        "--llama-server", help="Start llama.cpp's llama-server with cg's flags instead (for cg's --server).")]
    = False,
    server: Annotated[str | None, typer.Option(
        "--server", help="Run the model on this llama-server or OpenAI-compatible server (URL): cg serve as the "
                         f"FIM-correct gateway in front of it. Not read from {settings.SERVER.name}.")] = None,
    server_api: Annotated[Api | None, typer.Option(
        "--server-api", case_sensitive=False, help="With --server: llama or openai (default: found from the URL).")]
    = None,
    server_key_file: Annotated[Path | None, typer.Option(
        "--server-key-file", help="With --server: a file holding that server's API key (never read from "
                                  f"{settings.API_KEY.name}, which is the clients' key here).")] = None,
    max_prompt_tokens: MaxPromptTokensOpt = None,
    exact: ExactOpt = False,
    splice: SpliceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve completions to editors: llama.cpp's /infill, Ollama's /api/generate and OpenAI's
    /v1/completions, each with cg complete's prompt, stops and cuts; Ctrl-C stops it."""
    from cg.serve.key import read_key

    if model and model_opt and model != model_opt:
        raise UsageError(f"two models given: {model} and --model {model_opt}", "Pass one of them.")
    chosen = model or model_opt
    key = read_key(api_key_file)
    reuse = exact_choice(exact, splice)
    if llama_server and server:
        raise UsageError("--llama-server and --server contradict each other",
                         "--llama-server starts a llama-server; --server uses one that runs already.")
    if server_key_file is not None and not server:
        raise UsageError("--server-key-file is the key of a --server", "Pass --server URL too, or drop it.")
    upstream = read_key(server_key_file) if server_key_file is not None else ""
    if llama_server:
        from cg.serve.llama_server import ServeOptions
        from cg.serve.llama_server import serve as run_llama_server

        def ready(url: str) -> None:
            write_result(f"{url}\nexport CG_SERVER={url}\n")
            report.say(f"llama-server is serving {chosen or 'the default model'} at {url}; Ctrl-C stops it.")

        run_llama_server(ServeOptions(model=chosen, ctx=ctx, jobs=jobs, host=host, port=port, threads=threads,
                                      gpu_layers=gpu_layers, api_key=key, verbose=verbose), ready)
        return
    from cg.serve.server import ServeSettings
    from cg.serve.server import serve as run_server

    def listening(url: str, label: str) -> None:
        write_result(f"{url}\n")
        report.say(f"cg is serving {label} at {url}: /infill (llama.vim, llama.vscode), "
              "/api/generate (Ollama, Continue), /v1/completions (OpenAI); Ctrl-C stops it.")

    # server "": not whatever CG_SERVER says; api_key: only --server-key-file's (CG_API_KEY is the clients' key)
    run = Request(model=chosen, n_ctx=ctx, threads=threads, gpu_layers=gpu_layers, verbose=verbose, quiet=True,
                  server=server or "", server_api=server_api.value if server_api else None, api_key=upstream,
                  max_prompt_tokens=max_prompt_tokens, exact=reuse).resolved()
    run_server(ServeSettings(run=run, host=host, port=port, api_key=key, jobs=jobs), listening)


@app.command()
def doctor() -> None:
    """Check cg's set-up: backend and GPU offload, CPU features, home, cache, models, settings, hub token."""
    from cg.cli.doctor import diagnose

    report = diagnose()
    write_result(report.text())
    if report.problems:
        raise typer.Exit(1)
