"""llama.cpp's model and context, driven through the C functions llama-cpp-python binds
(`llama_cpp.llama_cpp`) and nothing else of it: no `Llama` object, no private attribute.

A Context holds one KV memory shared by several sequences (kv_unified: every sequence may use
any of its n_ctx cells). A Sequence is one id in it with the tokens its cells hold, position i
holding tokens[i]; cutting, copying (cells shared, not duplicated: llama_memory_seq_cp) and
shifting its cells are its methods. `evaluate` decodes one sequence's tokens in physical batches
(n_ubatch) from where it ends; `step` decodes one token for each of several sequences in one
llama_decode. The logits of a decode's output rows are read with `logits(i)` until the next decode.

The parameters copy what llama-cpp-python 0.3.36's Llama passes llama.cpp (flash attention off,
n_batch 512 or n_ctx if smaller, the same RoPE/YaRN defaults), so a prompt decoded here gives the
logits that Llama gave, bit for bit.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

N_BATCH = 512  # llama-cpp-python's default logical batch
_backend_ready = False


class LoadError(Exception):
    """llama.cpp refused the model file (the reason is in its log)."""


class ContextError(Exception):
    """The model loaded; llama.cpp could not make a context of that size."""


class DecodeError(RuntimeError):
    """llama_decode failed: 1 means no room in the KV memory for the batch."""

    def __init__(self, code: int):
        super().__init__(f"llama_decode returned {code}")
        self.code = code


def _lib() -> Any:
    import llama_cpp

    global _backend_ready  # noqa: PLW0603 - llama.cpp's backend is initialised once per process
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


def built_with_amx() -> bool:
    """This llama.cpp has AMX kernels (built natively on a CPU with AMX): weights loaded into its
    extra buffer types go to them."""
    return "AMX_INT8 = 1" in bytes(_lib().llama_print_system_info()).decode("utf-8", "replace")


class Model:
    """A loaded GGUF's weights and vocabulary. Passed to a C function it is its llama_model*."""

    def __init__(self, path: Path | str, *, gpu_layers: int = 0, use_extra_bufts: bool = True):
        lib = _lib()
        self._lib = lib
        self.params = lib.llama_model_default_params()
        self.params.n_gpu_layers = 0x7FFFFFFF if gpu_layers < 0 else gpu_layers  # as Llama stores "all"
        self.params.use_extra_bufts = use_extra_bufts  # weight repacking (AMX, AVX2 layouts...): False avoids it
        ptr = lib.llama_model_load_from_file(str(path).encode("utf-8"), self.params)
        if not ptr:
            raise LoadError(f"failed to load model from file: {path}")
        self.ptr: Any = ptr
        self.vocab = lib.llama_model_get_vocab(ptr)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))

    @property
    def _as_parameter_(self) -> Any:  # ctypes: a Model stands for its llama_model*
        return self.ptr

    def close(self) -> None:
        if self.ptr:
            self._lib.llama_model_free(self.ptr)
            self.ptr = None

    def metadata(self) -> dict[str, str]:
        lib, out = self._lib, {}
        for i in range(int(lib.llama_model_meta_count(self.ptr))):
            key = _string(lib.llama_model_meta_key_by_index, self.ptr, i)
            out[key] = _string(lib.llama_model_meta_val_str_by_index, self.ptr, i)
        return out

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        lib = self._lib
        size = len(text) + 2
        while True:
            buf = (lib.llama_token * size)()
            n = int(lib.llama_tokenize(self.vocab, text, len(text), buf, size, add_bos, special))
            if n >= 0:
                return list(buf[:n])
            if -n <= size:
                raise RuntimeError(f"llama_tokenize failed ({n})")
            size = -n

    def piece(self, token: int, special: bool = False) -> bytes:
        """One token's bytes (no leading-space handling: pieces join as they are)."""
        lib, size = self._lib, 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = int(lib.llama_token_to_piece(self.vocab, token, buf, size, 0, special))
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def detokenize(self, tokens: Seq[int], special: bool = False) -> bytes:
        """As llama-cpp-python's: the pieces joined, a leading space after a first BOS dropped."""
        out = b"".join(self.piece(int(t), special) for t in tokens)
        if tokens and int(tokens[0]) == self.bos() and out[:1] == b" ":
            return out[1:]
        return out

    def text(self, token: int) -> str:
        return bytes(self._lib.llama_vocab_get_text(self.vocab, token)).decode("utf-8", errors="replace")

    def bos(self) -> int:
        return int(self._lib.llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        return int(self._lib.llama_vocab_eos(self.vocab))

    def eot(self) -> int:
        return int(self._lib.llama_vocab_eot(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def n_swa(self) -> int:
        return int(self._lib.llama_model_n_swa(self.ptr))


def _string(call: Callable[[Any, int, Any, int], int], model: Any, index: int) -> str:
    """A string llama.cpp writes into a buffer (returning its length), whole."""
    size = 256
    while True:
        buf = ctypes.create_string_buffer(size)
        n = int(call(model, index, buf, size))
        if n < size:
            return buf.value.decode("utf-8", errors="replace")
        size = n + 1


class Sequence:
    """One sequence of a context: its id and the tokens its cells hold (tokens[i] at position i).
    remove/copy_to/shift change cells only; the methods that say so keep `tokens` in step."""

    def __init__(self, context: Context, seq_id: int):
        self.context, self.id = context, seq_id
        self.tokens: list[int] = []

    def __repr__(self) -> str:
        return f"Sequence({self.id}, {len(self.tokens)} tokens)"

    def remove(self, start: int = -1, end: int = -1) -> bool:
        """Cells at positions [start, end) out (-1: unbounded)."""
        return bool(self.context.lib.llama_memory_seq_rm(self.context.memory, self.id, start, end))

    def copy_to(self, other: Sequence, start: int = -1, end: int = -1) -> None:
        """other shares this sequence's cells at [start, end) (no copy of their data)."""
        self.context.lib.llama_memory_seq_cp(self.context.memory, self.id, other.id, start, end)

    def shift(self, start: int, end: int, delta: int) -> None:
        """Cells at [start, end) moved by delta positions (the keys' RoPE rotation is redone)."""
        self.context.lib.llama_memory_seq_add(self.context.memory, self.id, start, end, delta)

    def keep_only(self) -> None:
        """Every cell of every other sequence out."""
        self.context.lib.llama_memory_seq_keep(self.context.memory, self.id)

    def span(self) -> tuple[int, int]:
        """The first and last positions held, (-1, -1) if none."""
        lib, memory = self.context.lib, self.context.memory
        return int(lib.llama_memory_seq_pos_min(memory, self.id)), int(lib.llama_memory_seq_pos_max(memory, self.id))

    def clear(self) -> None:
        self.remove()
        self.tokens = []

    def truncate(self, n: int) -> None:
        """Keep the first n tokens' cells."""
        if len(self.tokens) > n or self.span()[1] >= n:
            self.remove(n)
        del self.tokens[n:]

    def share_prefix(self, other: Sequence, n: int) -> None:
        """other becomes this sequence's first n tokens, their cells shared."""
        other.clear()
        if n:
            self.copy_to(other, 0, n)
        other.tokens = self.tokens[:n]

    def complete(self) -> bool:
        """Holds every position [0, len(tokens)) and no other."""
        n = len(self.tokens)
        return self.span() == ((0, n - 1) if n else (-1, -1))


class Context:
    """A llama_context on a Model: one KV memory, n_seq_max sequences sharing its cells."""

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int, n_ubatch: int, n_seq_max: int = 8,
                 swa_full: bool = True, n_batch: int = N_BATCH):
        lib = self.lib = model._lib
        self.model = model
        p = self.params = lib.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = min(n_ctx, n_batch)
        p.n_ubatch = min(p.n_batch, n_ubatch)
        p.n_threads = p.n_threads_batch = n_threads
        p.n_seq_max = n_seq_max
        p.kv_unified = True  # every sequence may use any of the n_ctx cells
        p.swa_full = swa_full
        p.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama(flash_attn=False)
        p.rope_scaling_type = lib.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
        p.pooling_type = lib.LLAMA_POOLING_TYPE_UNSPECIFIED
        p.attention_type = lib.LLAMA_ATTENTION_TYPE_UNSPECIFIED
        p.rope_freq_base = p.rope_freq_scale = 0.0
        p.yarn_ext_factor, p.yarn_attn_factor, p.yarn_beta_fast, p.yarn_beta_slow = -1.0, 1.0, 32.0, 1.0
        p.yarn_orig_ctx = 0
        p.embeddings, p.offload_kqv, p.no_perf = False, True, False
        ptr = lib.llama_init_from_model(model.ptr, p)
        if not ptr:
            raise ContextError(f"failed to create a {n_ctx}-token context")
        self.ctx: Any = ptr
        self.memory = lib.llama_get_memory(ptr)
        self.n_ubatch = max(1, int(p.n_ubatch))
        self.n_batch = max(1, int(p.n_batch))
        self.can_shift = bool(lib.llama_memory_can_shift(self.memory))
        self._buffer = lib.llama_batch_init(self.n_batch, 0, n_seq_max)
        self._sequences = [Sequence(self, i) for i in range(n_seq_max)]

    @property
    def _as_parameter_(self) -> Any:  # ctypes: a Context stands for its llama_context*
        return self.ctx

    @property
    def model_params(self) -> Any:
        return self.model.params

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self._buffer)
            self.lib.llama_free(self.ctx)
            self.ctx = None
        self.model.close()

    def n_ctx(self) -> int:
        return int(self.lib.llama_n_ctx(self.ctx))

    def n_vocab(self) -> int:
        return self.model.n_vocab

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        return self.model.tokenize(text, add_bos, special)

    def detokenize(self, tokens: Seq[int], special: bool = False) -> bytes:
        return self.model.detokenize(tokens, special)

    def sequence(self, seq_id: int) -> Sequence:
        return self._sequences[seq_id]

    @property
    def sequences(self) -> list[Sequence]:
        return list(self._sequences)

    def clear(self) -> None:
        """Every cell of every sequence out."""
        for seq in self._sequences:
            seq.tokens = []
        self.lib.llama_memory_seq_rm(self.memory, -1, -1, -1)

    def evaluate(self, seq: Sequence, tokens: Seq[int], *, on_chunk: Callable[[int], None] | None = None,
                 chunk: int | None = None) -> int:
        """tokens after seq's last, in chunks of n_ubatch (llama.cpp's own split of a longer
        batch), logits for the last one only; returns its output row for logits(). on_chunk gets
        how many of seq's tokens are evaluated after each chunk."""
        step = chunk or self.n_ubatch
        row = -1
        for at in range(0, len(tokens), step):
            part = tokens[at:at + step]
            start = len(seq.tokens)
            self._fill([(int(t), start + k, seq.id) for k, t in enumerate(part)], last_only=True)
            self._decode()
            seq.tokens.extend(int(t) for t in part)
            row = len(part) - 1
            if on_chunk is not None:
                on_chunk(len(seq.tokens))
        return row

    def step(self, moves: Seq[tuple[Sequence, int]]) -> list[int]:
        """One llama_decode: each token after its sequence's last; their output rows, in order."""
        self._fill([(token, len(seq.tokens), seq.id) for seq, token in moves], last_only=False)
        self._decode()
        for seq, token in moves:
            seq.tokens.append(token)
        return list(range(len(moves)))

    def logits(self, row: int) -> np.ndarray:
        """The logits of an output row of the last decode (a view: writable, valid until the next decode)."""
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def state(self, seq_id: int = -1) -> bytes | None:
        """llama_state_seq_get_data: the cells (of every sequence for -1) with their positions."""
        size = int(self.lib.llama_state_seq_get_size(self.ctx, seq_id))
        buffer = (ctypes.c_uint8 * size)()
        written = int(self.lib.llama_state_seq_get_data(self.ctx, buffer, size, seq_id))
        return bytes(buffer)[:written] if written else None

    def load_state(self, state: bytes, seq_id: int) -> bool:
        """A state from state() into seq_id, all of it read (False: refused). Tokens are the caller's."""
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(self.lib.llama_state_seq_set_data(self.ctx, buffer, len(state), seq_id)) == len(state)

    def _fill(self, entries: Seq[tuple[int, int, int]], *, last_only: bool) -> None:
        if not 0 < len(entries) <= self.n_batch:
            raise ValueError(f"a batch of {len(entries)} tokens (1..{self.n_batch})")
        batch = self._buffer  # a llama_batch: n_tokens is its C field
        batch.n_tokens = len(entries)
        for i, (token, pos, seq_id) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = not last_only or i == len(entries) - 1

    def _decode(self) -> None:
        code = int(self.lib.llama_decode(self.ctx, self._buffer))
        if code != 0:
            raise DecodeError(code)
