"""The pipeline: checkpoint folder -> registry converter -> streamed GGUF -> llama.cpp quantizer.

Tensors are read one at a time from memory-mapped safetensors, in row blocks, and written as
they are converted: peak memory stays near one block, not the model. Every output goes to a
temp file beside the target and is renamed in at the end; on any error or Ctrl-C nothing
partial remains.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cg.errors import ConversionError, DiskSpaceError, OutputExistsError

from . import registry
from .checkpoint import Checkpoint, TensorEntry, open_checkpoint
from .llama_quant import FTYPES, quantize_gguf
from cg.progress import progress_bar
from .vocab import load_vocab, write_vocab

FLOAT_TYPES = {"f32": 0, "f16": 1, "bf16": 32}  # llama_ftype of the float outputs
TYPES = [*FTYPES, *FLOAT_TYPES]
# Bytes per weight, roughly, to check disk space before starting.
_BYTES_PER_WEIGHT = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1.07, "q6_k": 0.83, "q5_k_m": 0.72,
                     "q4_k_m": 0.62, "q4_k_s": 0.58}
_SOURCE_FLOAT = {"F32": "f32", "F64": "f32", "F16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class PlannedTensor:
    entry: TensorEntry
    name: str  # GGUF name
    qtype: str  # f32 / f16 / bf16


def convert(src_dir: Path | str, out: Path | str | None = None, *, type: str = "q4_k_m", force: bool = False,
            threads: int | None = None, name: str | None = None, register: bool = True) -> Path:
    """Convert a Hugging Face checkpoint folder to a GGUF of the given type; return its path."""
    if type not in TYPES:
        raise ConversionError(f"unknown type {type!r}", "Choose one of: " + ", ".join(TYPES))
    ckpt = open_checkpoint(src_dir)
    converter = registry.lookup(ckpt.architecture)(ckpt.config)
    vocab = load_vocab(ckpt.folder, ckpt.config.get("vocab_size"))
    plan = plan_tensors(ckpt, converter)
    model_name = name or f"{ckpt.folder.name.lower()}-{type}"
    target = Path(out) if out else _store_path(model_name)
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    n_weights = sum(p.entry.n_elements for p in plan)
    float_type = type if type in FLOAT_TYPES else _intermediate_type(plan)
    need = n_weights * (_BYTES_PER_WEIGHT[type] + (0 if type in FLOAT_TYPES else _BYTES_PER_WEIGHT[float_type]))
    _check_disk(target.parent, need)
    with _temp_beside(target) as tmp:
        if type in FLOAT_TYPES:
            write_gguf(ckpt, converter, vocab, plan, tmp, type)
        else:
            with _temp_beside(target, f".{float_type}") as intermediate:
                write_gguf(ckpt, converter, vocab, plan, intermediate, float_type)
                with progress_bar(f"Quantizing to {type}", total=len(plan)) as advance:
                    quantize_gguf(intermediate, tmp, type, threads=threads,
                                  on_progress=lambda i, total: advance(completed=i, total=total))
        os.replace(tmp, target)
    if register and not out:
        _register(model_name, target, type, ckpt, vocab)
    return target


def plan_tensors(ckpt: Checkpoint, converter) -> list[PlannedTensor]:
    """Names, checked shapes and output types of every tensor, before any data is read."""
    plan = []
    for hf_name in sorted(ckpt.tensors, key=_natural_key):
        if converter.skip(hf_name):
            continue
        entry = ckpt.tensors[hf_name]
        name = converter.map_name(hf_name)
        expected = converter.expected_shape(name)
        if expected is not None and tuple(entry.shape) != tuple(expected):
            raise ConversionError(f"tensor {hf_name} has shape {list(entry.shape)}, expected {list(expected)}",
                                  "The weights do not match config.json; download the checkpoint again.")
        plan.append(PlannedTensor(entry, name, ""))
    if not plan:
        raise ConversionError(f"no tensors found in {ckpt.folder}")
    return plan


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _intermediate_type(plan: list[PlannedTensor]) -> str:
    """Lossless float type for the file llama.cpp quantizes: the checkpoint's own precision."""
    kinds = {_SOURCE_FLOAT[p.entry.dtype] for p in plan if len(p.entry.shape) > 1}
    return "f32" if len(kinds) != 1 else kinds.pop()


def _tensor_type(name: str, shape: tuple[int, ...], file_type: str) -> str:
    # As llama.cpp's converter: 1-D tensors and norms stay F32.
    return "f32" if len(shape) <= 1 or name.endswith("_norm.weight") else file_type


def write_gguf(ckpt: Checkpoint, converter, vocab, plan: list[PlannedTensor], path: Path, file_type: str) -> None:
    import gguf
    import numpy as np

    qtypes = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16}
    writer = gguf.GGUFWriter(None, converter.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(ckpt.config.get("_name_or_path") or ckpt.folder.name)
    converter.set_params(writer)
    writer.add_file_type(FLOAT_TYPES[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)
    types = [_tensor_type(p.name, p.entry.shape, file_type) for p in plan]
    item_size = {"f32": 4, "f16": 2, "bf16": 2}
    for p, t in zip(plan, types):
        writer.add_tensor_info(p.name, p.entry.shape, np.dtype(np.float32), p.entry.n_elements * item_size[t],
                               raw_dtype=qtypes[t])
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        total = sum(p.entry.nbytes for p in plan)
        with progress_bar(f"Converting to {file_type}", total=total) as advance:
            for p, t in zip(plan, types):
                writer.write_padding(fout, fout.tell())
                written = 0
                for block in p.entry.rows():
                    data = gguf.quants.quantize(converter.transform(p.name, block), qtypes[t])
                    data.tofile(fout)
                    written += data.nbytes
                    advance(block.size * (p.entry.nbytes // max(1, p.entry.n_elements)))
                writer.write_padding(fout, written)
        fout.flush()
        os.fsync(fout.fileno())
    finally:
        writer.close()


@contextmanager
def _temp_beside(target: Path, tag: str = "") -> Iterator[Path]:
    tmp = target.with_name(f".{target.name}{tag}.{os.getpid()}.tmp")
    try:
        yield tmp
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_disk(folder: Path, need: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < need * 1.05:
        raise DiskSpaceError(f"not enough disk space in {folder}: need about {need / 2**30:.1f} GiB, "
                             f"{free / 2**30:.1f} GiB free")


def _store_path(model_name: str) -> Path:
    from cg import store

    return store.models_dir() / f"{model_name}.gguf"


def _register(model_name: str, path: Path, type: str, ckpt: Checkpoint, vocab) -> None:
    from cg import store

    ids = {k: v for k, v in vocab.special.items() if k in ("bos", "eos", "fim_pre", "fim_suf", "fim_mid", "fim_sep", "eot")}
    store.register(store.ModelRecord(name=model_name, path=str(path), quant=type,
                                     source=str(ckpt.config.get("_name_or_path") or ckpt.folder),
                                     special_ids=ids))
