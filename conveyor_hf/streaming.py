"""Live views of one ``generate`` call: transformers streamers and an event iterator.

- :class:`StreamerBridge` feeds any transformers ``BaseStreamer`` (``TextStreamer``,
  ``TextIteratorStreamer``) the whole answer as the user reads it: the prompt first (as
  ``model.generate`` does, so ``skip_prompt`` works), then each text delta and each
  appended tool result, once and in order, and ``end()`` once when the answer is done.
- :class:`ConveyorStream` runs ``generate`` on a background thread and yields its
  :class:`~conveyor_hf.outputs.StreamEvent` s as they happen; the final
  :class:`~conveyor_hf.outputs.ConveyorOutput` is ``stream.output`` afterwards. Leaving
  the loop early (``break``, ``close()``) cancels the generation.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from conveyor_hf.outputs import ConveyorOutput, StreamEvent

if TYPE_CHECKING:
    from transformers.generation.streamers import BaseStreamer

_DONE = object()


class StreamerBridge:
    """Turns stream events into ``streamer.put(ids)`` calls (see the module docstring)."""

    def __init__(self, streamer: "BaseStreamer", tokenizer: Any, prompt_ids: torch.Tensor,
                 then: Callable[[StreamEvent], None] | None = None) -> None:
        if prompt_ids.dim() == 2 and prompt_ids.shape[0] != 1:
            raise ValueError(
                f"streamer= shows one answer, but this call has {prompt_ids.shape[0]} rows; generate one "
                "conversation per call, or use stream=callback (events carry their row)"
            )
        self.streamer, self.tokenizer, self.then = streamer, tokenizer, then
        self._prompt = prompt_ids.reshape(1, -1).cpu()
        self._lock = threading.Lock()

    def start(self) -> None:
        self.streamer.put(self._prompt)

    def __call__(self, event: StreamEvent) -> None:
        if event.kind in ("text", "result") and event.text:
            ids = self.tokenizer(event.text, add_special_tokens=False)["input_ids"]
            with self._lock:
                self.streamer.put(torch.tensor(ids, dtype=torch.long))
        if self.then is not None:
            self.then(event)

    def end(self) -> None:
        self.streamer.end()


class ConveyorStream:
    """Iterator over the events of one ``generate`` call (see the module docstring).

    Example::

        for event in gen.stream(messages, max_new_tokens=200):
            if event.kind == "text":
                print(event.text, end="", flush=True)
        print(stream.output.timeline.summary())
    """

    def __init__(self, generate: Callable[..., ConveyorOutput], inputs: Any, kwargs: dict[str, Any]) -> None:
        user_stream = kwargs.pop("stream", None)
        self._cancel = kwargs.pop("cancel", None) or threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue()
        self.output: ConveyorOutput | None = None
        self._error: BaseException | None = None
        self._closed = False

        def on_event(event: StreamEvent) -> None:
            self._queue.put(event)
            if user_stream is not None:
                user_stream(event)

        def run() -> None:
            try:
                self.output = generate(inputs, stream=on_event, cancel=self._cancel, **kwargs)
            except BaseException as exc:  # re-raised in the consumer's thread
                self._error = exc
            finally:
                self._queue.put(_DONE)

        self._thread = threading.Thread(target=run, name="conveyor-stream", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[StreamEvent]:
        return self

    def __next__(self) -> StreamEvent:
        if self._closed:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finish()
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop early: cancel the generation and wait for it (bounded by its tools)."""
        if self._closed:
            return
        self._cancel.set()
        while self._queue.get() is not _DONE:
            pass
        self._finish()

    def _finish(self) -> None:
        self._closed = True
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self) -> "ConveyorStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # an abandoned iterator must not leave decoding running
        if not self._closed:
            self._cancel.set()
