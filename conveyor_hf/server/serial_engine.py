"""``SerialEngine``: an in-process engine shared by concurrent requests, one decoding at a time.

``GenerateEngine`` cannot batch across ``generate`` calls, and two ``model.generate``
calls at once would only fight over the same cores. So requests take turns: a request
holds the decoder only while it decodes a round, and gives it up the moment its round
stops, before it waits for its tools. A conversation waiting for a tool therefore holds
no decode slot, and another request decodes meanwhile (each keeps its own KV cache, so
nothing is re-prefilled when it comes back).

It wraps the tool loop the inner engine sees: :meth:`ToolLoop.begin_round` takes the
decoder lock, :meth:`ToolLoop.settle` (called after each round stops, before the tool
work is awaited) gives it back; everything else passes through unchanged.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from conveyor_hf.engines.base import Engine

if TYPE_CHECKING:
    from transformers import GenerationConfig

    from conveyor_hf.loop import ToolLoop


class SerialEngine(Engine):
    """Runs ``inner`` for any number of concurrent requests, one decoding round at a time."""

    name = "serial"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.model = getattr(inner, "model", None)
        self.supports_replay = inner.supports_replay
        self._decoder = threading.Lock()

    @property
    def device(self) -> Any:
        return self.inner.device

    def default_generation_config(self) -> "GenerationConfig":
        return self.inner.default_generation_config()

    def check_options(self, config: "GenerationConfig", extra: dict[str, Any]) -> None:
        self.inner.check_options(config, extra)

    def describe(self) -> str:
        return f"{self.inner.describe()}, one request decodes at a time"

    def run(self, loop: "ToolLoop") -> None:
        turns = _TakingTurns(loop, self._decoder)
        try:
            self.inner.run(turns)  # type: ignore[arg-type]  # a ToolLoop in all it is asked for
        finally:
            turns.give_back()

    def close(self) -> None:
        self.inner.close()


class _TakingTurns:
    """A view of one request's :class:`ToolLoop` that holds the decoder lock from the
    start of each round until the round's first ``settle``."""

    def __init__(self, loop: "ToolLoop", decoder: threading.Lock) -> None:
        self._loop = loop
        self._decoder = decoder
        self._held = False

    def begin_round(self, *args: Any, **kwargs: Any) -> Any:
        if not self._held:
            self._decoder.acquire()
            self._held = True
        return self._loop.begin_round(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> Any:
        self.give_back()  # before waiting for tool work
        return self._loop.settle(*args, **kwargs)

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._decoder.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)
