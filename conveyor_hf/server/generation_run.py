"""``GenerationRun``: one answer decoding on a thread of its own, reported to the event loop.

``ConveyorGenerator.generate`` blocks (it decodes, or waits for the remote engine and the
tools), so each admitted request runs it on a dedicated thread that ends with the
answer: threads never pile up, and a finished server is back to its resting thread
count. What the answer's stream callback sees — model text deltas and the tool results
appended after each call — is handed to the event loop in order as :class:`Delta` s,
then the end as :class:`Finished` or :class:`Failed`. Setting :meth:`abort` (the client
went away) stops decoding at the next token and kills the request's tools at once, so
a statement still running in its kernel stops too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.outputs import ConveyorOutput, StreamEvent
from conveyor_hf.server.conversation_tools import ConversationTools
from conveyor_hf.server.prompts import Prompt
from conveyor_hf.server.serving_engine import ServingEngine
from conveyor_hf.tools.caller import CallerTool


class AnswerFailed(RuntimeError):
    """The engine ended the answer with an error mid-way (a remote server's connection
    dropped, a batching manager died); the message says what happened."""


@dataclass
class Delta:
    """Content the client has not seen yet: model text or an appended tool result."""

    text: str


@dataclass
class Finished:
    output: ConveyorOutput


@dataclass
class Failed:
    error: Exception


class GenerationRun:
    """One request's ``generate`` call on its own thread.

    Streaming: ``events`` receives :class:`Delta` s, then one :class:`Finished` or
    :class:`Failed`. Otherwise ``result`` resolves to the output (or raises).
    ``client_tools`` are the client's functions (their calls end the answer);
    ``parallel_tool_calls`` None keeps the generator's default.
    ``on_end(run)`` runs on the event loop once the thread is done, to give back its
    slot and tools.
    """

    def __init__(self, *, serving: ServingEngine, tools: ConversationTools, prompt: Prompt,
                 generate_kwargs: dict[str, Any], mode: str, max_tool_rounds: int, stream: bool,
                 loop: asyncio.AbstractEventLoop, on_end: Callable[["GenerationRun"], None], name: str,
                 client_tools: Sequence[CallerTool] = (), parallel_tool_calls: bool | None = None) -> None:
        self.serving, self.tools, self.prompt = serving, tools, prompt
        self.client_tools, self.parallel_tool_calls = list(client_tools), parallel_tool_calls
        self.generate_kwargs = generate_kwargs
        self.mode, self.max_tool_rounds = mode, max_tool_rounds
        self.streaming = stream
        self.cancel = threading.Event()
        self.events: asyncio.Queue = asyncio.Queue()
        self.result: asyncio.Future = loop.create_future()
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.output: ConveyorOutput | None = None
        self.error: Exception | None = None
        self._loop = loop
        self._on_end = on_end
        self._thread = threading.Thread(target=self._run, name=f"conveyor-{name}", daemon=True)

    @property
    def aborted(self) -> bool:
        return self.cancel.is_set()

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        """The client went away: stop at the next token, kill the tools now (idempotent)."""
        if self.cancel.is_set() or self.ended is not None:
            return
        self.cancel.set()
        threading.Thread(target=self.tools.close, name="conveyor-abort", daemon=True).start()

    def _run(self) -> None:
        item: Finished | Failed
        try:
            options = {} if self.parallel_tool_calls is None else {"parallel_tool_calls": self.parallel_tool_calls}
            gen = ConveyorGenerator(self.serving.engine, self.serving.tokenizer,
                                    tools=[*self.tools.tools, *self.client_tools], mode=self.mode,
                                    max_tool_rounds=self.max_tool_rounds, **options)
            self.output = gen.generate(input_ids=self.prompt.input_ids, max_new_tokens=self.prompt.max_tokens,
                                       stream=self._on_event if self.streaming else None, cancel=self.cancel,
                                       **self.generate_kwargs)
            if self.output.stop_reasons and self.output.stop_reasons[0] == "error":
                raise AnswerFailed(self.output.errors[0] or "the engine ended the answer with an error")
            item = Finished(self.output)
        except Exception as exc:  # reported to the client; the server goes on
            self.error = exc
            item = Failed(exc)
        self.ended = time.perf_counter()
        self._post(self._finish, item)

    def _on_event(self, event: StreamEvent) -> None:
        text = event.shown if event.kind == "result" else event.text if event.kind == "text" else ""
        if text and not self.cancel.is_set():
            self._post(self.events.put_nowait, Delta(text))

    def _finish(self, item: Finished | Failed) -> None:
        """(Event loop.) Report the end, then let the server take back the slot and tools."""
        if self.streaming:
            self.events.put_nowait(item)
        elif not self.result.done():
            if isinstance(item, Finished):
                self.result.set_result(item.output)
            else:
                self.result.set_exception(item.error)
        self._on_end(self)

    def _post(self, callback: Callable[[Any], None], item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass
