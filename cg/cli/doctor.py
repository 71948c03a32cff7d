"""`cg doctor` and `cg --version`: what cg runs on, where it keeps things, and what is broken.

Each check gives a line for the report; a broken one also gives a problem and its fix.
Never prints a token, key or password: only whether one is there and where it comes from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from cg import settings
from cg.engine.remote.client import display_url, open_server
from cg.errors import UsageError
from cg.models import store


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what is wrong, how to fix it)

    def add(self, label: str, value: str) -> None:
        self.lines.append((label, value))

    def problem(self, what: str, fix: str) -> None:
        self.problems.append((what, fix))

    def text(self) -> str:
        width = max(len(label) for label, _ in self.lines)
        out = [f"{label:<{width}}  {value}" for label, value in self.lines]
        out += [f"Problem: {what}\n  Fix: {fix}" for what, fix in self.problems]
        out.append("All good." if not self.problems else f"{len(self.problems)} problem(s) found.")
        return "\n".join(out) + "\n"


def version_line() -> str:
    """cg, llama-cpp-python and llama.cpp versions, on one line."""
    try:
        import llama_cpp

        lib = llama_cpp.llama_version().decode()
        binding = llama_cpp.__version__
    except Exception as exc:
        lib = binding = f"unavailable ({type(exc).__name__})"
    return f"cg {metadata.version('cg')}, llama-cpp-python {binding}, llama.cpp {lib}"


def diagnose() -> Report:
    report = Report()
    report.add("version", version_line())
    _backend(report)
    report.add("threads", f"{os.cpu_count() or 1} (all cores; -t N to change)")
    home = _home(report)
    _cache(report, home)
    _models(report)
    _settings(report)
    _token(report)
    return report


def _backend(report: Report) -> None:
    try:
        import llama_cpp
    except Exception as exc:
        report.problem(f"llama-cpp-python does not load: {exc}",
                       "Reinstall it: pip install --force-reinstall --no-cache-dir llama-cpp-python")
        return
    backends, features = system_info(llama_cpp.llama_print_system_info().decode())
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    report.add("backend", ", ".join(backends) or "CPU")
    report.add("GPU offload", "available: every layer runs on the GPU by default (--gpu-layers)" if offload
               else "not available in this llama.cpp build (README: GPU: offload layers)")
    report.add("CPU features", " ".join(features) or "-")
    if "AMX_INT8" in features:
        from cg.engine.local.engine import repack_weights

        report.add("AMX", "on (CG_AMX)" if repack_weights() else
                   "built in, off: llama.cpp's AMX kernels crash on some machines (llama.cpp #20824); "
                   "CG_AMX=1 turns them on")


def system_info(info: str) -> tuple[list[str], list[str]]:
    """llama.cpp's "CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 | AVX = 1 | ..." -> (backends, CPU features on)."""
    backends: list[str] = []
    features: list[str] = []
    current = ""
    for segment in (s.strip() for s in info.split("|")):
        flag = segment
        if " : " in segment:
            current, flag = (part.strip() for part in segment.split(" : ", 1))
            backends.append(current)
        name, _, value = flag.partition(" = ")
        if current == "CPU" and value.strip() == "1":
            features.append(name.strip())
    return backends, features


def _home(report: Report) -> Path:
    home = store.home()
    try:
        store.ensure_dir(home)
        probe = home / f".doctor-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as exc:
        report.add("cg home", f"{home} (unusable)")
        report.problem(f"cg's home {home} cannot be written: {getattr(exc, 'message', exc)}",
                       "Set CG_HOME to a writable folder, or fix the permissions of this one.")
        return home
    report.add("cg home", f"{home} ({_size(home) / 2**20:.0f} MiB)")
    return home


def _cache(report: Report, home: Path) -> None:
    limit, on = "?", True
    try:
        limit = f"{settings.prompt_cache_bytes() / 2**20:.0f} MiB"
        on = settings.prompt_cache_on()
    except UsageError as exc:
        report.problem(exc.message, exc.hint)
    state = "on" if on else "off (CG_PROMPT_CACHE=0)"
    report.add("prompt cache", f"{state}, {_size(home / 'prompt-cache') / 2**20:.0f} MiB of {limit}")


def _models(report: Report) -> None:
    try:
        records = store.available()  # the bundled model too, as `cg models` lists it
        chosen = store.best_installed()
    except Exception as exc:
        report.add("models", "unreadable")
        report.problem(str(getattr(exc, "message", exc)), str(getattr(exc, "hint", "")) or "See the error above.")
        return
    for rec in records:
        if not Path(rec.path).exists() and not rec.bundled:  # the bundled one is placed again when used
            report.problem(f"model {rec.name} is registered but its file is missing: {rec.path}",
                           f"cg models rm {rec.name}, then download or convert it again.")
    names = [f"{'*' if chosen and chosen.name == r.name else ''}{r.name} ({r.quant or '-'}, {r.size / 2**20:.0f} MiB)"
             for r in records]
    report.add("models", ", ".join(names) if names else "none installed")
    env_model = settings.text(settings.MODEL)
    default = (f"{env_model} (CG_MODEL)" if env_model else chosen.name if chosen
               else f"{store.BUNDLED_NAME} (bundled; cg download codegemma-2b for CodeGemma)")
    report.add("default model", default)


def _settings(report: Report) -> None:
    found = [f"{v.name}={_shown(v, value)}" for v in settings.VARIABLES if (value := settings.text(v))]
    report.add("settings", " ".join(found) if found else "none (CG_* variables unset)")
    server = settings.text(settings.SERVER)
    checks = [lambda: open_server(server, settings.text(settings.API_KEY)) if server else None,
              lambda: settings.integer(settings.GPU_LAYERS, -1),
              lambda: settings.integer(settings.MAX_PROMPT_TOKENS, 16), settings.exact_reuse, settings.server_timeout]
    for check in checks:
        try:
            check()
        except UsageError as exc:
            report.problem(exc.message, exc.hint)


def _shown(var: settings.Variable, value: str) -> str:
    """A setting's value as the report shows it: never a key, nor a password in a server's URL."""
    return "***" if var.secret else display_url(value) if var.url else value


def _token(report: Report) -> None:
    source = "HF_TOKEN" if settings.text(settings.HF_TOKEN) else None
    if source is None:
        try:
            from huggingface_hub import get_token

            source = "hf auth login" if get_token() else None
        except Exception:
            source = None
    report.add("hub token", f"present (from {source})" if source else "not set (needed for the gated CodeGemma repos)")


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
