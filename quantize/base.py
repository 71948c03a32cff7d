"""The converter base class and the registry it fills (the shape of llama.cpp's ModelBase.register).

A subclass names the Hugging Face architectures it converts (`hf_architectures`) and its
`gguf.MODEL_ARCH` member; defining the class registers it. The base owns everything common:
tensor-name mapping through gguf's table, the shape check, the full tensor list; a subclass
overrides its parameters, expected shapes and tensor transforms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConversionError

if TYPE_CHECKING:
    import gguf
    import numpy as np

CONVERTERS: dict[str, type[Converter]] = {}


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

    def skip(self, hf_name: str) -> bool:
        return hf_name.endswith(".rotary_emb.inv_freq")

    def map_name(self, hf_name: str) -> str:
        import gguf

        table = gguf.get_tensor_name_map(self.arch, self.n_blocks)
        name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"unexpected tensor {hf_name!r} for {self.arch_name}",
                                  "The checkpoint does not match its config.json architecture.")
        return name

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the GGUF must hold (GGUF name -> shape in HF order)."""
        raise NotImplementedError

    def transform(self, gguf_name: str, block: np.ndarray) -> np.ndarray:
        return block

    def set_params(self, writer: gguf.GGUFWriter) -> None:
        raise NotImplementedError
