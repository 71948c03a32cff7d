"""Where the model runs, behind one interface: the protocol and its events (protocol.py), the one
decode loop (decode.py), the factory that picks an engine from the options (factory.py), and the
engines: local/ (llama.cpp in this process) and remote/ (llama-server, OpenAI-compatible servers).
Nothing above this package imports local/ or remote/."""

from cg.engine.decode import check_token_ids, decode
from cg.engine.protocol import (
                                Engine,
                                EngineInfo,
                                LogitsProcessor,
                                Piece,
                                PromptProgress,
                                Sampling,
                                SpecialIds,
                                Timings,
                                TokenEvent,
                                is_instruct_name,
                                split_sentinels,
)

__all__ = ["Engine", "EngineInfo", "LogitsProcessor", "Piece", "PromptProgress", "Sampling", "SpecialIds",
           "Timings", "TokenEvent", "check_token_ids", "decode", "is_instruct_name", "split_sentinels"]
