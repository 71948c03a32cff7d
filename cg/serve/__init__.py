"""`cg serve`: cg's own HTTP server for editor plugins, over the same library as `cg complete`.

Three APIs editors already speak, each a small translation between its JSON and a FimRequest
(request.py), run by cg.complete.stream_complete on one worker thread (slots.py):
  infill_api  llama.cpp's /infill (llama.vim, llama.vscode), /props, /health
  ollama_api  Ollama's /api/generate with suffix (Continue), /api/tags, /api/show, /api/version
  openai_api  OpenAI's /v1/completions with suffix, /v1/models
app.py holds the routes, the key check and the bounds; server.py runs it on uvicorn.
Modules here import starlette and uvicorn: the CLI imports them only when serving.
"""
