"""The one worker thread that runs every completion, its queue, and cancellation.

llama.cpp's context is not thread-safe, so one thread owns the engine and decodes for every
request in turn (first come, first served: none starves). The asyncio side submits a Job and
reads what the worker hands it through the event loop. A job stops within one decode step when
it is cancelled: by its client going away, by a newer request naming the same slot (the next
keystroke in an editor), or by the server stopping. Stopping means closing the generators, so
the engine keeps the prompt's KV for the next request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

from cg import report
from cg.complete import Completion, collect, stream_complete
from cg.engine import Engine, EngineInfo, LogitsProcessor, Piece, PromptProgress, Sampling, Timings, decode
from cg.errors import CgError
from cg.prompt.build import fim_prompt, prefix_prompt
from cg.request import Request
from cg.serve.body import FimRequest

MAX_QUEUE = 64  # jobs waiting; beyond, a request is answered 503 at once


@dataclass
class Outcome:
    """How a job ended: the whole text and cg's Completion (None when it never started)."""

    text: str
    completion: Completion | None
    cancelled: bool = False


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Failed:
    status: int
    message: str


Item = Text | Outcome | Failed  # what a job's reader gets: texts, then an Outcome or a Failed


@dataclass
class Job:
    request: FimRequest
    loop: asyncio.AbstractEventLoop
    items: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, item: Item) -> None:
        """From the worker thread; a loop already closed (the server stopped) has no reader."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:
            pass


@dataclass(frozen=True)
class Steered:
    """An engine that stops generating once `cancelled` is set, checked after every piece (one
    decode step). quota 0 only evaluates the prompt: the first piece, which needs the whole
    prompt evaluated, is taken and not passed on."""

    inner: Engine
    cancelled: threading.Event
    quota: int | None = None

    @property
    def info(self) -> EngineInfo:
        return self.inner.info

    @property
    def load_ms(self) -> float:
        return self.inner.load_ms

    def tokenize_text(self, text: str) -> list[int]:
        return self.inner.tokenize_text(text)

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling,
                 logit_bias: dict[int, float] | None, logits_processor: LogitsProcessor | None,
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool,
                 cancel: Callable[[], bool] | None = None) -> Generator[Piece, None, None]:
        def stop() -> bool:  # the next keystroke's request, or the client gone: between two prompt chunks too
            return self.cancelled.is_set() or (cancel is not None and cancel())

        pieces = self.inner.generate(prompt, max_tokens=max_tokens, sampling=sampling, logit_bias=logit_bias,
                                     logits_processor=logits_processor, timings=timings, on_prompt=on_prompt,
                                     exact=exact, cancel=stop)
        try:
            for passed, piece in enumerate(pieces):
                if self.quota is not None and passed >= self.quota:
                    return
                yield piece
                if self.cancelled.is_set():
                    return
        finally:
            pieces.close()  # the engine trims its KV cache to the prompt, kept for the next request


class Worker:
    """Owns the engine; runs jobs one at a time on its own thread."""

    def __init__(self, engine: Engine, base: Request):
        self.engine, self.base = engine, base
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._closed = False
        self.prompt_tokens = self.predicted_tokens = self.done = 0  # totals, for /metrics
        self._thread = threading.Thread(target=self._loop, name="cg-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job (False: the queue is full). A job naming a slot replaces the jobs queued
        or running for that slot."""
        with self._lock:
            if job.request.slot is not None:
                self._replace(job.request.slot)
            self._drop_cancelled()
            if self._closed or len(self._queue) >= MAX_QUEUE:
                return False
            self._queue.append(job)
            self._lock.notify()
            return True

    def _replace(self, slot: int) -> None:
        for other in (*self._queue, self._running):
            if other is not None and other.request.slot == slot:
                other.cancel()

    def _drop_cancelled(self) -> None:
        """Answer and drop the queued jobs cancelled (replaced, or their clients gone): kept queued
        while the worker is busy (a long prompt), a keystroke's abandoned requests filled the queue."""
        for other in [j for j in self._queue if j.cancelled.is_set()]:
            self._queue.remove(other)
            other.put(Outcome("", None, cancelled=True))
            self.done += 1

    def load(self) -> tuple[int, int]:
        """(jobs running, jobs waiting)."""
        with self._lock:
            return int(self._running is not None), len(self._queue)

    def cancel_all(self) -> None:
        """Cancel every job, answer its client now, and take no more (the server is stopping). The
        answer cannot wait for the worker: a step it cannot leave (a long prompt's evaluation, a
        16 MiB prompt's tokenizing) outlasts the grace the connections get, and uvicorn then
        kills their handlers with a traceback."""
        with self._lock:
            self._closed = True
            for job in (*self._queue, self._running):
                if job is not None:
                    job.cancel()
                    job.put(Failed(503, "cg serve is stopping"))
            self._lock.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything and end the thread (it finishes the decode step it is in)."""
        self.cancel_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _next(self) -> Job | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            self._running = self._queue.popleft() if self._queue else None
            return self._running

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                outcome = self._run(job)
                self._count(outcome)
                job.put(outcome)
            except CgError as exc:  # bad input (empty, too long for the context) or a failed model
                job.put(Failed(400 if exc.exit_code == 2 else 500, exc.message))
            except Exception as exc:  # a bug: the server stays up, the client gets a 500
                report.say(f"Error: cg serve: {type(exc).__name__}: {exc}")
                job.put(Failed(500, f"internal error: {type(exc).__name__}"))
            finally:
                with self._lock:
                    self._running = None
                    self.done += 1

    def _count(self, outcome: Outcome) -> None:
        with self._lock:
            if outcome.completion is not None:
                self.prompt_tokens += outcome.completion.prompt_tokens
                self.predicted_tokens += outcome.completion.completion_tokens

    def _run(self, job: Job) -> Outcome:
        if job.cancelled.is_set():
            return Outcome("", None, cancelled=True)
        req = job.request
        # the server's settings (model, reuse policy) with what this HTTP request asked
        request = replace(self.base, context=req.context, max_tokens=max(req.max_tokens, 1), max_time=req.max_time,
                          sampling=req.sampling, logit_bias=dict(req.logit_bias) or None, stop=req.stop)
        if req.max_tokens == 0:
            return self._evaluate_only(job, request)
        engine = Steered(self.engine, job.cancelled)
        for event in stream_complete(req.prefix, req.suffix, request, engine):
            if event.text:
                job.put(Text(event.text))
            if event.result is not None:
                return Outcome(event.result.text, event.result, cancelled=job.cancelled.is_set())
        raise AssertionError("stream ended without a result")

    def _evaluate_only(self, job: Job, request: Request) -> Outcome:
        """n_predict 0 (llama.vim's warm-up of its extra context): the prompt cg would build,
        evaluated and kept; also with nothing before or after the cursor, which a completion
        refuses. The prompt's window is the default request's, so the next request reuses it."""
        engine = Steered(self.engine, job.cancelled, quota=0)
        request = replace(request, max_tokens=self.base.max_tokens)  # the window the next request has
        req = job.request
        if engine.info.special.has_fim:
            prompt = fim_prompt(engine, req.prefix, req.suffix, request)
        else:
            prompt = prefix_prompt(engine, req.prefix, request)
        done = collect(decode(engine, prompt.ids, replace(request, max_tokens=1), fim=engine.info.special.has_fim,
                              truncated=prompt.truncated))
        return Outcome("", done, cancelled=job.cancelled.is_set())
