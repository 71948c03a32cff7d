"""The pipeline: checkpoint folder -> registry converter -> streamed GGUF -> llama.cpp quantizer.

Tensors are read one at a time from the safetensors files, in row blocks, and written as they
are converted: peak memory stays near one block, not the model. Every output goes to a temp file
beside the target and is renamed in at the end (quantize/atomic.py); on any error or Ctrl-C
nothing partial remains.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cg_core.atomic import atomic_path, check_free_space, check_replaceable, scratch_path

from . import (
    jlama,
    registry,
)
from .base import Converter
from .checkpoint import Checkpoint, open_checkpoint
from .config import show
from .errors import ConversionError, OutputExistsError
from .llama_quant import OutType, quantize_gguf
from .readers import CHUNK_BYTES, READERS, rows
from .tensors import TensorEntry
from .vocab import Vocab, load_vocab, write_vocab

if TYPE_CHECKING:
    import gguf

# progress(description, total) -> a context manager yielding advance(amount=0, *, completed=None, total=None)
Advance = Callable[..., None]
Progress = Callable[[str, float], AbstractContextManager[Advance]]

# Bytes per weight, roughly, to check disk space before starting.
_BYTES_PER_WEIGHT = {OutType.F32: 4, OutType.F16: 2, OutType.BF16: 2, OutType.Q8_0: 1.07, OutType.Q6_K: 0.83,
                     OutType.Q5_K_M: 0.72, OutType.Q4_K_M: 0.62, OutType.Q4_0: 0.57, OutType.Q4_K_S: 0.58}
# Jlama's dequantized values are exact in f32 only.
_SOURCE_FLOAT = {"F32": OutType.F32, "F64": OutType.F32, "F16": OutType.F16, "BF16": OutType.BF16,
                 "Q4": OutType.F32, "I8": OutType.F32}
# The output type when none is asked for: Jlama's Q4 copies losslessly to q4_0; its I8 is closest to q8_0.
_DEFAULT_TYPE = {"Q4": OutType.Q4_0, "I8": OutType.Q8_0, None: OutType.Q4_K_M}


@dataclass(frozen=True)
class PlannedTensor:
    entry: TensorEntry
    name: str  # GGUF name


@dataclass(frozen=True)
class Converted:
    path: Path
    vocab: Vocab
    source: str  # the checkpoint's _name_or_path, else its folder
    type: OutType
    jlama: str | None = None  # "Q4" / "I8" for a Jlama checkpoint
    requantized: bool = False  # quantized values were dequantized and quantized again (a second loss)
    copied_blocks: int = 0  # Q4 blocks copied into Q4_0 as they were
    rounded_blocks: int = 0  # of those, blocks whose f32 scale f16 had to round


    def note(self) -> str | None:
        """What a user holding a Jlama checkpoint should know about the conversion, or None."""
        if self.jlama is None:
            return None
        if self.type == OutType.F32:
            return f"Note: the Jlama {self.jlama} weights were dequantized exactly to f32."
        if self.requantized:
            return (f"Note: the Jlama {self.jlama} weights were dequantized and quantized again to {self.type.value} "
                    "(two roundings)" + ("; --type q4_0 copies Jlama Q4 losslessly." if self.jlama == "Q4" else "."))
        if self.rounded_blocks:
            return (f"Note: copied {self.copied_blocks} Jlama Q4 blocks into Q4_0; {self.rounded_blocks} of their "
                    "f32 scales do not fit f16 and were rounded (the rest is lossless).")
        return f"Note: copied {self.copied_blocks} Jlama Q4 blocks into Q4_0 losslessly."


@dataclass
class _Written:
    copied_blocks: int = 0
    rounded_blocks: int = 0


def _no_progress(_description: str, _total: float) -> AbstractContextManager[Advance]:
    return nullcontext(lambda *_a, **_k: None)


def default_type(src_dir: Path | str) -> OutType:
    """The output type `convert` picks when none is given: q4_0 for Jlama Q4 (lossless), q8_0 for
    Jlama I8, else q4_k_m."""
    return _DEFAULT_TYPE[open_checkpoint(src_dir).jlama]


def convert(src_dir: Path | str, out: Path | str, *, type: OutType | str | None = None, force: bool = False,
            threads: int | None = None, progress: Progress = _no_progress) -> Converted:
    """Convert a Hugging Face checkpoint folder (or a Jlama-quantized one) to a GGUF at `out`.

    type None: default_type(). From Jlama Q4 to q4_0 the nibbles are copied and each scale
    written as f16 (lossless where f16 holds the scale, which it does for weights that were bf16);
    other types from Jlama dequantize exactly, then llama.cpp quantizes again."""
    ckpt = open_checkpoint(src_dir)
    try:
        out_type = OutType(str(type).lower()) if type is not None else _DEFAULT_TYPE[ckpt.jlama]
    except ValueError:
        raise ConversionError(f"unknown type {type!r}",
                              "Choose one of: " + ", ".join(t.value for t in OutType)) from None
    converter = registry.lookup(ckpt.architecture)(ckpt.config)
    source = ckpt.name_or_path or str(ckpt.folder)  # checked before any output exists
    plan = plan_tensors(ckpt, converter)  # before the vocabulary: it checks vocab_size against the embedding
    vocab = load_vocab(ckpt.folder, converter.n_vocab)
    target = Path(out)
    check_replaceable(target)  # a device or FIFO is never replaced, --force or not
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    n_weights = sum(p.entry.n_elements for p in plan)
    copied = out_type == OutType.Q4_0 and ckpt.jlama == "Q4"  # Jlama's nibbles as they are
    direct = out_type.is_float or copied  # written here, no quantizer
    float_type = out_type if direct else _intermediate_type(plan)
    need = n_weights * (_BYTES_PER_WEIGHT[out_type] + (0 if direct else _BYTES_PER_WEIGHT[float_type]))
    check_free_space(target.parent, need, f"the {out_type.value} GGUF")
    with atomic_path(target) as tmp:
        if direct:
            written = write_gguf(ckpt, converter, vocab, plan, tmp, out_type, progress)
        else:
            with scratch_path(target, f".{float_type.value}") as intermediate:
                written = write_gguf(ckpt, converter, vocab, plan, intermediate, float_type, progress)
                with progress(f"Quantizing to {out_type.value}", len(plan)) as advance:
                    quantize_gguf(intermediate, tmp, out_type, threads=threads,
                                  on_progress=lambda i, total: advance(completed=i, total=total))
    requantized = ckpt.jlama is not None and not copied and out_type != OutType.F32
    return Converted(target, vocab, source, out_type, ckpt.jlama,
                     requantized, written.copied_blocks, written.rounded_blocks)


def plan_tensors(ckpt: Checkpoint, converter: Converter) -> list[PlannedTensor]:
    """Names and checked shapes of every tensor, and none missing, before any data is read."""
    converter.check_blocks(ckpt.tensors)  # first: the expected tensors are n_blocks times a block's
    expected = converter.tensor_dims()
    plan = []
    for hf_name in sorted(ckpt.tensors, key=_natural_key):
        if converter.skip(hf_name):
            continue
        entry = ckpt.tensors[hf_name]
        name = converter.map_name(hf_name)
        dims = expected.get(name)
        if dims is None:
            raise ConversionError(f"unexpected tensor {show(hf_name, 100)} for {converter.arch_name}",
                                  "The checkpoint does not match its config.json architecture.")
        if entry.shape != tuple(d.size for d in dims):
            raise ConversionError(f"tensor {hf_name} in {entry.file.name} has shape {list(entry.shape)}; config.json "
                                  f"makes it {[d.size for d in dims]} ({', '.join(d.field for d in dims)})",
                                  "The weights do not match config.json; download the checkpoint again.")
        plan.append(PlannedTensor(entry, name))
    missing = sorted(set(expected) - {p.name for p in plan}, key=_natural_key)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConversionError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: "
                              + ", ".join(missing[:3]) + more,
                              "Download the whole checkpoint again; every shard is needed.")
    return plan


def _natural_key(name: str) -> list[tuple[int, str]]:
    # Digit runs compare by value, without int(): a header may hold a name with 5000 digits.
    return [(len(p.lstrip("0")), p.lstrip("0")) if i % 2 else (0, p) for i, p in enumerate(re.split(r"(\d+)", name))]


def _intermediate_type(plan: list[PlannedTensor]) -> OutType:
    """Lossless float type for the file llama.cpp quantizes: the checkpoint's own precision."""
    kinds = {_SOURCE_FLOAT[p.entry.dtype] for p in plan if len(p.entry.shape) > 1}
    return OutType.F32 if len(kinds) != 1 else kinds.pop()


def _tensor_type(p: PlannedTensor, file_type: OutType) -> gguf.GGMLQuantizationType:
    import gguf

    kinds = {OutType.F32: gguf.GGMLQuantizationType.F32, OutType.F16: gguf.GGMLQuantizationType.F16,
             OutType.BF16: gguf.GGMLQuantizationType.BF16, OutType.Q4_0: gguf.GGMLQuantizationType.Q4_0}
    shape = p.entry.shape
    # As llama.cpp's converter: 1-D tensors and norms stay F32.
    if len(shape) <= 1 or p.name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if file_type == OutType.Q4_0 and shape[-1] % jlama.Q4_BLOCK:
        return gguf.GGMLQuantizationType.F16  # rows Q4_0 cannot split into blocks
    return kinds[file_type]


def write_gguf(ckpt: Checkpoint, converter: Converter, vocab: Vocab, plan: list[PlannedTensor], path: Path,
               file_type: OutType, progress: Progress = _no_progress) -> _Written:
    """A GGUF of float tensors, or of Q4_0 ones copied from Jlama Q4 (what llama.cpp's quantizer
    would write from the same weights: the same nibbles, the same f16 scales)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(None, converter.arch_name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(ckpt.name_or_path or ckpt.folder.name)
    converter.set_params(writer)
    writer.add_file_type(file_type.ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab)
    types = [_tensor_type(p, file_type) for p in plan]
    for p, t in zip(plan, types, strict=True):
        block, size = gguf.GGML_QUANT_SIZES[t]
        writer.add_tensor_info(p.name, p.entry.shape, np.dtype(np.float32), p.entry.n_elements // block * size,
                               raw_dtype=t)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        return _write_tensors(writer, converter, plan, types, file_type, progress)
    finally:
        writer.close()


def _write_tensors(writer: gguf.GGUFWriter, converter: Converter, plan: list[PlannedTensor],
                   types: list[gguf.GGMLQuantizationType], file_type: OutType, progress: Progress) -> _Written:
    import gguf

    # gguf-py has no public call to stream one tensor's data in pieces: its writer's file
    # (pyproject bounds gguf to the versions where `fout` is this list; a test checks it).
    fout = writer.fout[0]  # type: ignore[index]
    total = sum(p.entry.n_elements for p in plan)
    stats = _Written()
    with progress(f"Converting to {file_type.value}", total) as advance:
        for p, t in zip(plan, types, strict=True):
            writer.write_padding(fout, fout.tell())
            written = 0
            copy = READERS[p.entry.dtype].q4_0_blocks  # Jlama Q4: the same blocks as ggml's Q4_0
            if t == gguf.GGMLQuantizationType.Q4_0 and copy is not None:
                for data, rounded in copy(p.entry, CHUNK_BYTES):
                    data.tofile(fout)
                    written += data.nbytes
                    blocks = data.nbytes // jlama.Q4_0_BLOCK_BYTES
                    stats.copied_blocks += blocks
                    stats.rounded_blocks += rounded
                    advance(blocks * jlama.Q4_BLOCK)
            else:
                for block in rows(p.entry):
                    data = gguf.quants.quantize(converter.transform(p.name, block), t)
                    data.tofile(fout)
                    written += data.nbytes
                    advance(block.size)
            writer.write_padding(fout, written)
    fout.flush()
    return stats
