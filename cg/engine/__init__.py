"""Where the model runs, behind one interface: the protocol and its events (protocol.py), the one
decode loop (decode.py), the factory that picks an engine from the request (factory.py), and the
engines: local/ (llama.cpp in this process) and remote/ (llama-server, OpenAI-compatible servers).
Nothing above this package imports local/ or remote/."""

from cg.engine.decode import check_token_ids, decode
from cg.engine.protocol import (
    Completion,
    Cutter,
    Engine,
    EngineInfo,
    Event,
    LogitsProcessor,
    Piece,
    PromptProgress,
    Sampling,
    SpecialIds,
    Timings,
    is_instruct_name,
    split_sentinels,
)

__all__ = ["Completion", "Cutter", "Engine", "EngineInfo", "Event", "LogitsProcessor", "Piece", "PromptProgress",
           "Sampling", "SpecialIds", "Timings", "check_token_ids", "decode", "is_instruct_name", "split_sentinels"]
