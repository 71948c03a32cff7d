"""Use cg as a library: one completion, then a stream (the model stays loaded between calls)."""

from cg.complete import Request, complete, stream_complete

opts = Request(max_tokens=48, quiet=True)
result = complete("def add(a, b):\n", "\n\nprint(add(1, 2))\n", request=opts)
print(repr(result.text), result.stop_reason, f"{result.timings.generation_ms:.0f} ms")

for event in stream_complete("import os\n\ndef list_python_files(folder):\n", "", request=opts):
    print(event.text, end="", flush=True)
print()
