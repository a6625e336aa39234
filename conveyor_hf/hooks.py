"""The per-step hook that runs inside ``model.generate``.

``generate`` calls every ``StoppingCriteria`` once per decoding step with the whole
``input_ids``. :class:`ConveyorHook` is one: for each batch row it detokenizes the
newest token incrementally, feeds the text to the row's call detector and the open
call's unit parser, hands complete units to the tools (non-blocking), and returns True
for a row once its tool call has closed, so ``generate`` stops that row and the tool
loop can append the result. It never blocks on tool work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from transformers import StoppingCriteria

from parsers.calls import CallDetector, CallEvent

StopReason = Literal["call", "eos", "length", "abort"]


class IncrementalDetokenizer:
    """Turns one row's token ids into text deltas, one token at a time.

    Decoding each token alone breaks multi-byte characters split over tokens and
    tokenizers that merge or strip spaces. Like vLLM and TGI, this decodes a short
    window of recent tokens twice (with and without the newest) and returns the
    difference, holding it back while it ends in an incomplete character (U+FFFD).
    ``context`` is the ids just before the first new token, for correct leading spaces.
    """

    def __init__(self, tokenizer, context: Sequence[int] = (), *, window: int = 6) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(context)[-window:]
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes (possibly "")."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.prefix_offset > 64:  # keep the window short: decoding cost stays flat
                drop = self.prefix_offset
                self.ids = self.ids[drop:]
                self.prefix_offset, self.read_offset = 0, self.read_offset - drop
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the end of the answer)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""

    def restart(self, context: Sequence[int], window: int = 6) -> None:
        """Continue after ids appended by the caller (a tool result)."""
        self.ids = list(context)[-window:]
        self.prefix_offset, self.read_offset = 0, len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class CallHandler:
    """What the hook needs from a tool-call session (see ``conveyor_hf.formats``)."""

    def feed(self, text: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self, closed: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def failed(self) -> bool:
        return False


@dataclass
class RowState:
    """Everything one batch row carries across steps and rounds.

    ``prompt`` and ``tokens`` are the row's ids (without padding): the prompt, then what
    was kept of each round and the ids appended after each call. ``pieces`` is the text.
    """

    row: int
    detector: CallDetector
    detokenizer: IncrementalDetokenizer
    budget: int
    prompt: list[int] = field(default_factory=list)
    generated: int = 0
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    handler: CallHandler | None = None
    handlers: list[CallHandler] = field(default_factory=list)
    stop: StopReason | None = None
    stop_length: int | None = None
    dropped_eos: bool = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class ConveyorHook(StoppingCriteria):
    """A ``StoppingCriteria`` that drives tool partial execution, one state per row.

    ``open_call(row_state, event)`` is called when a call opens and returns the
    :class:`CallHandler` that receives the call's body text. ``on_text(row, text)`` sees
    every text delta (for streaming). Rows are the states in ``self.active``, in batch
    order; rows already stopped return True, as ``generate`` expects.
    """

    def __init__(
        self,
        eos_token_ids: set[int],
        open_call: Callable[[RowState, CallEvent], CallHandler],
        on_text: Callable[[int, str], None] | None = None,
        *,
        abort_on_error: bool = False,
    ) -> None:
        self.eos_token_ids = eos_token_ids
        self.open_call = open_call
        self.on_text = on_text
        self.abort_on_error = abort_on_error
        self.active: list[RowState] = []

    def start_round(self, rows: list[RowState]) -> None:
        """Follow ``rows`` (in batch order) through the next ``generate`` call."""
        self.active = rows
        for state in rows:
            state.stop, state.stop_length, state.dropped_eos = None, None, False
            state.handler, state.handlers = None, []

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        length = input_ids.shape[1]
        newest = input_ids[:, -1].tolist()
        flags = []
        for state, token in zip(self.active, newest):
            if state.stop is None:
                self._step(state, int(token), length)
            flags.append(state.stop is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

    def _step(self, state: RowState, token: int, length: int) -> None:
        state.generated += 1
        if token in self.eos_token_ids:
            state.stop, state.stop_length = "eos", length
            return
        delta = state.detokenizer.push(token)
        if delta:
            self.feed_text(state, delta)
        if state.stop is None and state.generated >= state.budget:
            state.stop, state.stop_length = "length", length
        elif state.stop == "call":
            state.stop_length = length
        elif self.abort_on_error and state.handler is not None and state.handler.failed:
            state.stop, state.stop_length = "abort", length

    def feed_text(self, state: RowState, text: str) -> None:
        """Route a text delta of ``state``'s row through its detector."""
        state.pieces.append(text)
        if self.on_text is not None:
            self.on_text(state.row, text)
        for event in state.detector.feed(text):
            self._dispatch(state, event)

    def end_of_text(self, state: RowState) -> None:
        """The row will produce no more text in this round: flush and close open calls."""
        rest = state.detokenizer.flush()
        if rest:
            self.feed_text(state, rest)
        if state.stop != "call" and state.detector.in_call:
            for event in state.detector.close():
                self._dispatch(state, event)

    def _dispatch(self, state: RowState, event: CallEvent) -> None:
        if state.stop == "call":  # text after the closer in the same token: keep as text only
            return
        if event.kind == "open":
            state.handler = self.open_call(state, event)
            state.handlers.append(state.handler)
        elif event.kind == "body" and state.handler is not None:
            state.handler.feed(event.text)
        elif event.kind == "close" and state.handler is not None:
            state.handler.close(event.closed)
            state.handler = None
            if event.closed:
                state.stop = "call"
