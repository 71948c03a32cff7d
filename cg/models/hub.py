"""`cg download`: a Hugging Face hub repository -> a registered, ready-to-run GGUF.

Everything that touches the hub goes through huggingface_hub (tokens, cache, offline mode,
resuming a dropped connection with a Range request). The endpoint, cache folder and offline
switch are read from the environment at call time, so HF_ENDPOINT, HF_HOME/HF_HUB_CACHE and
HF_HUB_OFFLINE work however cg was started.

A repository that holds GGUF files gives the one matching --quant; otherwise only the files that
conversion needs are fetched and the quantize pipeline runs. The store entry is written last:
an interrupted or failed download registers nothing.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cg import report, settings
from cg.errors import (
    AuthError,
    CgError,
    DiskSpaceError,
    HubNotFoundError,
    InputError,
    ModelFileError,
    NetworkError,
    OutputExistsError,
)
from cg.models import catalogue, special_ids, store
from cg_core.atomic import atomic_path, check_free_space
from cg_core.tokens import FIM_AND_TURN
from quantize.llama_quant import TYPE_NAMES, OutType

SHORT_NAMES = {m.name: m.repo for m in catalogue.MODELS}
# What conversion reads; nothing else is fetched (no *.bin, *.pt, *.msgpack, *.h5 ...).
CHECKPOINT_FILES = {"config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "model.safetensors.index.json"}
_QUANT_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(q\d_k_[sml]|q\d_k|q\d_\d|iq\d_[a-z]+|f16|bf16|f32)(?:[^a-z0-9]|$)")


@dataclass(frozen=True)
class Snapshot:
    """One revision of a repository: its commit and files (path -> size; -1 where unknown)."""

    repo_id: str
    commit: str
    files: dict[str, int]
    revision: str | None = None  # the branch, tag or commit asked for (None: main)
    local_dir: Path | None = None  # set when the files come from the cache (offline)


@dataclass(frozen=True)
class Plan:
    kind: str  # "gguf" or "checkpoint"
    files: tuple[str, ...]


def repo_for(model: str | None) -> tuple[str, str]:
    """(repo id, base name for the store) from a short name or any `owner/name` repo id."""
    model = model or catalogue.DEFAULT
    if model in SHORT_NAMES:
        return SHORT_NAMES[model], model
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        base = model.split("/")[1].lower()
        return model, re.sub(r"[-_.]gguf$", "", base)
    raise InputError(f"unknown model {model!r}",
                     "Use a short name (" + ", ".join(SHORT_NAMES) + ") or a hub repo id like owner/name.")


def quant_of(filename: str) -> str | None:
    """The quantization a GGUF file name announces ("codegemma-2b-Q4_K_M.gguf" -> "q4_k_m")."""
    m = _QUANT_IN_NAME.search(Path(filename).name.lower().replace("-", "_").removesuffix(".gguf") + ".")
    return m.group(1) if m else None


def choose(files: dict[str, int], quant: str) -> Plan:
    """The GGUF that matches `quant`, else the checkpoint files conversion needs, else an error."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    matching = [f for f in ggufs if quant_of(f) == quant]
    if matching:
        if len(matching) > 1 or re.search(r"-\d{5}-of-\d{5}\.gguf$", matching[0]):
            raise HubNotFoundError(f"the {quant} GGUF in this repository is split into several files: "
                                   + ", ".join(matching), "Pick another --quant, or download and merge it yourself.")
        return Plan("gguf", (matching[0],))
    top = {f for f in files if "/" not in f}
    weights = sorted(f for f in top if f.endswith((".safetensors", ".safetensor")))  # Jlama's shards drop the s
    if weights and "config.json" in top:
        wanted = CHECKPOINT_FILES | ({"tokenizer.json"} if "tokenizer.model" not in top else set())
        return Plan("checkpoint", tuple(sorted((top & wanted) | set(weights))))
    if ggufs:
        quants = sorted({q for q in map(quant_of, ggufs) if q})
        raise HubNotFoundError(f"no {quant} GGUF in this repository; it has: "
                               + (", ".join(quants) if quants else ", ".join(ggufs)),
                               f"Pass one of them with --quant (e.g. --quant {quants[0] if quants else 'q8_0'}).")
    other = sorted(f for f in top if f.endswith((".bin", ".pt", ".pth", ".msgpack", ".h5")))
    raise HubNotFoundError("this repository has neither GGUF files nor safetensors weights"
                           + (f" (only {', '.join(other)}, which cg does not read)" if other else ""),
                           "Pick a repository with *.safetensors or *.gguf files.")


def download(model: str | None = None, *, quant: str | None = None, token: str | None = None,
             revision: str | None = None, force: bool = False, keep_source: bool = False,
             name: str | None = None, threads: int | None = None) -> store.ModelRecord:
    """Fetch MODEL from the hub, convert it if needed, register it; return its store record.

    quant None: q4_k_m, except for a Jlama checkpoint, whose own quantization decides (q4_0
    for Q4, a lossless copy; q8_0 for I8)."""
    if quant is not None and quant.lower() not in TYPE_NAMES:
        raise InputError(f"unknown --quant {quant!r}", "Choose one of: " + ", ".join(TYPE_NAMES))
    repo_id, base = repo_for(model)
    hub = _Hub(token)
    snap = hub.snapshot(repo_id, revision)
    plan = choose(snap.files, (quant or OutType.Q4_K_M).lower())
    # The quant is known now, except for a checkpoint converted to its default type: a Jlama
    # checkpoint's own quantization decides, and only its files tell.
    quant = (quant or (OutType.Q4_K_M if plan.kind == "gguf" else "")).lower() or None
    installed = _installed(repo_id, snap, name or (f"{base}-{quant}" if quant else None), force)
    if installed is not None:
        return installed
    hub.check_space(snap, plan)
    with hub.progress():
        local = {f: hub.fetch(snap, f) for f in plan.files}
    if quant is None:
        from quantize.convert import default_type

        quant = default_type(local["config.json"].parent).value
        installed = _installed(repo_id, snap, name or f"{base}-{quant}", force)
        if installed is not None:
            return installed
    name = name or f"{base}-{quant}"
    target = store.ensure_dir(store.models_dir()) / f"{name}.gguf"
    if plan.kind == "gguf":
        ids = _place(local[plan.files[0]], target, plan.files[0], repo_id)
    else:
        from cg.report import progress_bar
        from quantize.convert import convert

        src = local["config.json"].parent
        report.say(f"Converting {repo_id} to {quant}")
        result = convert(src, target, type=OutType(quant), force=True, threads=threads, progress=progress_bar)
        if note := result.note():
            report.say(note)
        ids = special_ids_to_record(target, announce=False)
    source_dir = _keep_source(local, target.with_suffix(".source")) if keep_source and plan.kind != "gguf" else ""
    record = store.ModelRecord(name=name, path=str(target), quant=quant, source=repo_id, revision=snap.commit,
                               special_ids=ids, source_dir=source_dir)
    try:
        store.register(record)
    except BaseException:  # a model file with no entry is one nobody can list or remove
        target.unlink(missing_ok=True)
        raise
    return record


def _installed(repo_id: str, snap: Snapshot, name: str | None, force: bool) -> store.ModelRecord | None:
    """The installed record of this very revision (under `name`, or any name while the name is
    not decided yet), or None to go on; an error when `name` holds something else (unless force)."""
    if force:
        return None
    records = [store.get(name)] if name else store.list_models()
    for rec in records:
        if rec is not None and rec.source == repo_id and rec.revision == snap.commit and Path(rec.path).exists():
            report.say(f"{rec.name} is already installed ({repo_id}@{snap.commit[:10]})")
            return rec
    existing = store.get(name) if name else None
    if existing is not None and Path(existing.path).exists():
        origin = (f"another revision of {repo_id} ({existing.revision[:10]})" if existing.source == repo_id
                  else f"{existing.source or 'a local file'}")
        raise OutputExistsError(f"{name} is already installed from {origin}",
                                "Pass --force to replace it, or --name to install this one beside it.")
    return None


def special_ids_to_record(path: Path, *, announce: bool, shown: str | None = None) -> dict[str, int]:
    """A GGUF's special ids (from its metadata, else its vocabulary's pieces) for cg's store.

    GGUFs from other converters usually lack fim_sep (and often eot); recording the ids in the
    store lets `cg complete` stop on them anyway. With `announce`, say on stderr what was missing
    (naming the file `shown`, else by its name).
    """
    shown = shown or path.name
    resolved, from_meta = special_ids.of_gguf(path)
    ids = resolved.named()
    if announce:
        found = {t: ids[t.name] for t in FIM_AND_TURN if t.name not in from_meta and t.name in ids}
        if found:
            report.note(f"{shown} lacks " + ", ".join(str(t.gguf_key) for t in found)
                        + "; cg recorded them from its vocabulary ("
                        + ", ".join(f"{t.name}={v}" for t, v in found.items()) + ") so completions stop correctly.")
        if not resolved.has_fim:
            report.note(f"{shown} has no FIM tokens; `cg complete` will continue the prefix only.")
    return ids


class _Hub:
    def __init__(self, token: str | None):
        self.token = token
        self.endpoint = (settings.text(settings.HF_ENDPOINT) or "https://huggingface.co").rstrip("/")
        self.cache_dir = _cache_dir()
        self.offline = settings.is_on(settings.HF_HUB_OFFLINE)

    def snapshot(self, repo_id: str, revision: str | None) -> Snapshot:
        """The commit and file list, from the hub; from the cache when offline or unreachable."""
        if self.offline:
            return self._cached(repo_id, revision, "HF_HUB_OFFLINE is set")
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=self.endpoint, token=self.token).model_info(
                repo_id, revision=revision, files_metadata=True)
        except Exception as exc:
            if _is_network_error(exc):
                snap = self._cached(repo_id, revision, None)
                report.note(f"the hub is unreachable ({self.endpoint}); using the cached {repo_id}@{snap.commit[:10]}")
                return snap
            raise self._mapped(exc, repo_id, revision) from exc
        if not info.sha:
            raise CgError(f"the hub gave no commit for {repo_id}", "Try again later.")
        files = {s.rfilename: (s.size if s.size is not None else -1) for s in info.siblings or []}
        return Snapshot(repo_id, info.sha, files, revision)

    def _cached(self, repo_id: str, revision: str | None, why: str | None) -> Snapshot:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=self.cache_dir,
                                            local_files_only=True))
        except Exception as exc:
            if why:
                raise NetworkError(f"{repo_id} is not in the hub cache and {why}",
                                   "Unset HF_HUB_OFFLINE and run the download once online.") from exc
            raise NetworkError(f"cannot reach the hub at {self.endpoint}, and {repo_id} is not cached",
                               "Check your connection (or HF_ENDPOINT): nothing of it is cached to use offline."
                               ) from exc
        files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        return Snapshot(repo_id, folder.name, files, revision, folder)

    def check_space(self, snap: Snapshot, plan: Plan) -> None:
        from huggingface_hub import try_to_load_from_cache

        need = sum(max(snap.files[f], 0) for f in plan.files
                   if snap.local_dir is None
                   and not isinstance(try_to_load_from_cache(snap.repo_id, f, cache_dir=self.cache_dir,
                                                             revision=snap.commit), str))
        folder = Path(self.cache_dir) if self.cache_dir else _default_cache()
        try:
            check_free_space(folder, need, "the download")
        except DiskSpaceError as exc:
            raise DiskSpaceError(exc.message, "Free some space or point HF_HOME at a bigger disk.") from None

    def fetch(self, snap: Snapshot, filename: str) -> Path:
        if snap.local_dir is not None:
            return snap.local_dir / filename
        from huggingface_hub import hf_hub_download

        try:
            # By the name asked for (so the cache records refs/<name> for offline use), checked
            # against the commit listed.
            path = Path(hf_hub_download(snap.repo_id, filename, revision=snap.revision or "main",
                                        cache_dir=self.cache_dir, endpoint=self.endpoint, token=self.token))
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DiskSpaceError(f"the disk filled up while downloading {filename}",
                                     "Free some space and run the command again; finished files are kept.") from exc
            raise self._mapped(exc, snap.repo_id, snap.commit) from exc
        if path.parent.name != snap.commit and "/" not in filename:
            raise HubNotFoundError(f"{snap.repo_id} changed while downloading ({snap.commit[:10]} -> "
                                   f"{path.parent.name[:10]})", "Run the command again.")
        return path

    def _mapped(self, exc: Exception, repo_id: str, revision: str | None) -> Exception:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        page = f"{self.endpoint}/{repo_id}"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, GatedRepoError) or (isinstance(exc, HfHubHTTPError) and status == 403):
            if status == 403:
                return AuthError(f"{repo_id} is gated and your token's account has not accepted its license",
                                 f"Accept the license at {page}, then run the command again.")
            return AuthError(f"{repo_id} is gated: the hub wants a token",
                             f"Accept the license at {page}, then pass --token, set HF_TOKEN or run `hf auth login`.")
        if isinstance(exc, RevisionNotFoundError):
            return HubNotFoundError(f"revision {revision!r} not found in {repo_id}",
                                    f"See the branches and tags at {page}/tree/main.")
        if isinstance(exc, EntryNotFoundError):
            return HubNotFoundError(f"a file vanished from {repo_id}@{(revision or 'main')[:10]}: {exc}",
                                    "Run the command again; the repository changed while downloading.")
        if isinstance(exc, RepositoryNotFoundError):
            if status == 401 and not self.token and not settings.text(settings.HF_TOKEN):
                return AuthError(f"{repo_id} was not found or is private",
                                 "Check the name; for a private repository pass --token or set HF_TOKEN.")
            return HubNotFoundError(f"repository {repo_id} not found on {self.endpoint}",
                                    "Check the name: short names are " + ", ".join(SHORT_NAMES) + ".")
        if _is_network_error(exc):
            return NetworkError(f"the connection to {self.endpoint} failed: {type(exc).__name__}",
                                "Run the command again to resume; finished files are kept in the hub cache.")
        if isinstance(exc, HfHubHTTPError):
            return CgError(f"the hub answered {status}: {str(exc).splitlines()[0]}",
                           "Try again later; see https://status.huggingface.co.")
        return exc

    @contextmanager
    def progress(self) -> Iterator[None]:
        """huggingface_hub's own bars on stderr when it is a terminal; silent otherwise."""
        from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        was_disabled = are_progress_bars_disabled()
        if not sys.stderr.isatty():
            disable_progress_bars()
        try:
            yield
        finally:
            if not was_disabled:
                enable_progress_bars()


def _is_network_error(error: BaseException) -> bool:
    """A connection that failed or dropped (checked along the cause chain, whatever the HTTP library)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    names = {"ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ReadError", "WriteError",
             "RemoteProtocolError", "NetworkError", "ConnectionError", "ProtocolError"}
    seen = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in names for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _cache_dir() -> str | None:
    hf_home = settings.text(settings.HF_HOME)
    return settings.text(settings.HF_HUB_CACHE) or (str(Path(hf_home) / "hub") if hf_home else None)


def _default_cache() -> Path:
    cache = settings.text(settings.XDG_CACHE_HOME) or str(Path.home() / ".cache")
    return Path(cache) / "huggingface" / "hub"


def _place(cached: Path, target: Path, filename: str, repo_id: str) -> dict[str, int]:
    """Check a cached GGUF whole, then put it into the store: a hard link (no second copy) where
    the disk allows, else a copy. Returns its special ids. A file that fails the check leaves
    nothing in the store (the hub cache keeps what the repository holds)."""
    from cg.models.gguf_header import GGUFHeaderError, check_file

    blob = cached.resolve()
    try:
        check_file(blob)
    except (GGUFHeaderError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise ModelFileError(f"{filename} from {repo_id} is not a GGUF cg can load: {reason}",
                             "The file is damaged or not a llama.cpp GGUF; pick another --quant or repository."
                             ) from None
    ids = special_ids_to_record(blob, announce=True, shown=Path(filename).name)
    with atomic_path(target) as tmp:
        _link_or_copy(blob, tmp)
    return ids


def _keep_source(local: dict[str, Path], folder: Path) -> str:
    """--keep-source: the checkpoint files beside the GGUF (hard links where possible)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, path in local.items():
            _link_or_copy(path.resolve(), tmp / name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no second copy of a multi-GB file) where the disk allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
