"""The converter base class and the registry it fills (the shape of llama.cpp's ModelBase.register).

A subclass names the Hugging Face architectures it converts (`hf_architectures`) and its
`gguf.MODEL_ARCH` member; defining the class registers it. The base owns everything common:
tensor-name mapping through gguf's table, the shape check, the full tensor list; a subclass
overrides its parameters, expected shapes and tensor transforms.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .config import show
from .errors import ConversionError

if TYPE_CHECKING:
    import gguf
    import numpy as np

CONVERTERS: dict[str, type[Converter]] = {}
# Hugging Face names a block's tensors model.layers.N.…; more digits than int32 holds is no block.
_HF_BLOCK = re.compile(r"model\.layers\.(\d{1,10})\.")


class Dim(NamedTuple):
    """One dimension of an expected tensor: its size and the config.json field(s) it comes from."""

    size: int
    field: str


class Converter:
    hf_architectures: ClassVar[tuple[str, ...]] = ()  # config.json "architectures" values
    model_arch: ClassVar[str] = ""  # gguf.MODEL_ARCH member name, e.g. "GEMMA"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        import gguf

        if cls.model_arch not in gguf.MODEL_ARCH.__members__:
            raise TypeError(f"{cls.__name__}.model_arch {cls.model_arch!r} is not a gguf.MODEL_ARCH member")
        for name in cls.hf_architectures:
            if name in CONVERTERS and CONVERTERS[name] is not cls:
                raise TypeError(f"{name} is already converted by {CONVERTERS[name].__name__}")
            CONVERTERS[name] = cls

    def __init__(self, config: dict[str, Any]):
        self.config = config

    @property
    def arch(self) -> gguf.MODEL_ARCH:
        import gguf

        return gguf.MODEL_ARCH[self.model_arch]

    @property
    def arch_name(self) -> str:
        """general.architecture, and the prefix of the model's metadata keys."""
        import gguf

        return gguf.MODEL_ARCH_NAMES[self.arch]

    @property
    def n_blocks(self) -> int:
        raise NotImplementedError

    @property
    def n_blocks_key(self) -> str:
        """The config.json field n_blocks comes from."""
        raise NotImplementedError

    @property
    def n_vocab(self) -> int:
        """config.json's vocabulary size, which the GGUF's token list is padded to."""
        raise NotImplementedError

    def check_blocks(self, hf_names: Iterable[str]) -> None:
        """The config's block count is the blocks the tensors hold, checked before anything is
        sized by it (gguf's name table and the expected tensors hold n_blocks entries)."""
        found = {int(m.group(1)) for name in hf_names if (m := _HF_BLOCK.match(name))}
        n = self.n_blocks
        if len(found) != n or max(found, default=-1) != n - 1:  # found is then exactly 0..n-1
            held = (f"{len(found)} blocks, numbered {min(found)}-{max(found)}" if found
                    else "no blocks (model.layers.N.*)")
            raise ConversionError(f"config.json {self.n_blocks_key} is {n}, but the checkpoint's tensors hold {held}",
                                  "config.json does not match the weights; download the checkpoint again.")

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith(".rotary_emb.inv_freq")

    @functools.cached_property
    def _name_table(self) -> gguf.TensorNameMap:
        import gguf

        return gguf.get_tensor_name_map(self.arch, self.n_blocks)

    def map_name(self, hf_name: str) -> str:
        name = self._name_table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"unexpected tensor {show(hf_name, 100)} for {self.arch_name}",
                                  "The checkpoint does not match its config.json architecture.")
        return name

    def tensor_dims(self) -> dict[str, tuple[Dim, ...]]:
        """Every tensor the GGUF must hold: GGUF name -> its dimensions in HF order."""
        raise NotImplementedError

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the GGUF must hold (GGUF name -> shape in HF order)."""
        return {name: tuple(d.size for d in dims) for name, dims in self.tensor_dims().items()}

    def transform(self, gguf_name: str, block: np.ndarray) -> np.ndarray:
        return block

    def set_params(self, writer: gguf.GGUFWriter) -> None:
        raise NotImplementedError
