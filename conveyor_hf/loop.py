"""One ``generate`` call of the tool loop, independent of the engine that decodes it.

A :class:`ToolLoop` holds the request's conversations (one per batch row), the tools in
flight, the timeline and the generation settings. Its engine decodes and, whenever a
conversation stops, calls :meth:`ToolLoop.settle`: keep what was decoded, wait only for
unfinished tool work, append the results in the model's own format, and say whether the
conversation resumes (returning the appended ids) or is done. :meth:`ToolLoop.output`
builds the :class:`~conveyor_hf.outputs.ConveyorOutput` at the end.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList

from parsers.calls import CallDetector, CallEvent, CallSyntax

from conveyor_hf.call_handlers import CallHandler, JsonCallHandler, UnitCallHandler
from conveyor_hf.call_log import CallLog, Mode
from conveyor_hf.conversation import Conversation, ConversationRules
from conveyor_hf.detokenizer import IncrementalDetokenizer
from conveyor_hf.outputs import ConveyorOutput, StreamEvent
from conveyor_hf.replay import ReplayLogitsProcessor
from conveyor_hf.timeline import RoundRecord, Timeline
from conveyor_hf.tools.base import SideEffect, Tool, ToolResult
from conveyor_hf.tools.caller import CallerCall, CallerTool

#: Side-effect classes whose calls of one turn run in call order.
ORDERED = (SideEffect.STATEFUL, SideEffect.MUTATING)


class ToolLoop:
    """One ``generate`` call: its conversations, tools in flight, timeline and settings.

    What an engine reads: ``conversations``; ``input_ids`` / ``attention_mask`` (the
    left-padded prompt batch) or ``prompt_texts`` (one rendered prompt per row);
    ``config`` (the effective ``GenerationConfig``) and ``extra`` (the other
    ``generate`` keywords); ``cache`` (a caller's KV cache, or None); ``rules`` (shared by
    the conversations); ``replayer`` (set by ``replay=``); ``max_rounds``. What it calls:
    :meth:`begin_round` / :meth:`end_round` around each decoding round, :meth:`settle`
    after each conversation stops. ``settle`` may be called from several threads at once.
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        tools_for_row: Callable[[int], dict[str, Tool]],
        syntaxes: Sequence[CallSyntax],
        mode: Mode,
        abort_on_error: bool,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_texts: Sequence[str] | None,
        config: GenerationConfig,
        extra: dict[str, Any],
        eos_token_ids: set[int],
        budget: int,
        max_rounds: int,
        cache: Any = None,
        stream: Callable[[StreamEvent], None] | None = None,
        started: float | None = None,
        cancel: threading.Event | None = None,
        parallel_tool_calls: bool = True,
        caller_tools: Sequence[CallerTool] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.tools_for_row = tools_for_row
        self.caller_tools = {tool.name: tool for tool in caller_tools}
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.config, self.extra, self.cache = config, extra, cache
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_rounds = max_rounds
        self.mode = mode
        self.parallel_tool_calls = parallel_tool_calls
        self.timeline = Timeline(start=started if started is not None else time.perf_counter(), mode=mode)
        self.notify = stream or (lambda event: None)
        # Without a stream callback nothing is built per text delta or unit (hot path).
        self.call_log = CallLog(
            self.timeline, mode,
            on_unit_done=None if stream is None else (
                lambda row, name, rec: stream(StreamEvent("unit", row, rec.output, name, rec))),
        )
        self.rules = ConversationRules(
            open_call=self._open_call,
            eos_token_ids=self.eos_token_ids,
            on_text=None if stream is None else (lambda row, text: stream(StreamEvent("text", row, text))),
            abort_on_error=abort_on_error,
            cancelled=cancel if cancel is not None else threading.Event(),
        )
        prompts = [input_ids[i][attention_mask[i].bool()].tolist() for i in range(input_ids.shape[0])]
        self.conversations = [
            Conversation(
                row=i,
                detector=CallDetector(syntaxes),
                detokenizer=IncrementalDetokenizer(tokenizer, prompt),
                budget=budget,
                prompt=prompt,
                rules=self.rules,
            )
            for i, prompt in enumerate(prompts)
        ]
        self._prompt_texts = list(prompt_texts) if prompt_texts is not None else None
        self.replayer: ReplayLogitsProcessor | None = None
        self._tokenizer_lock = threading.Lock()

    # -- what engines read -------------------------------------------------------------
    @property
    def prompt_texts(self) -> list[str]:
        """The prompt of each row as text (rendered chat, or the decoded ids)."""
        if self._prompt_texts is None:
            self._prompt_texts = [
                self.tokenizer.decode(c.prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                for c in self.conversations
            ]
        return self._prompt_texts

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (thread-safe)."""
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- set-up ------------------------------------------------------------------------
    def replay(self, texts: Sequence[str] | str) -> None:
        """Force ``texts`` (one per row) through the model instead of letting it choose."""
        if isinstance(texts, str):
            texts = [texts]
        rows = len(self.conversations)
        if len(texts) != rows:
            raise ValueError(f"replay has {len(texts)} texts for {rows} rows; give one text per row")
        if not self.eos_token_ids:
            raise ValueError("replay needs an EOS token to end each answer; set generation_config.eos_token_id")
        scripts = [self.encode_text(text) for text in texts]
        self.replayer = ReplayLogitsProcessor(scripts, eos_token_id=min(self.eos_token_ids), tokenizer=self.tokenizer)
        processors = list(self.extra.pop("logits_processor", None) or [])
        self.extra["logits_processor"] = LogitsProcessorList([*processors, self.replayer])

    # -- cancellation ------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop every conversation at its next token and wait for no tool work (any
        thread may call it; a server does when its client disconnects). Tool work already
        running goes on in its kernel or worker until the tool is closed or reset."""
        self.rules.cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self.rules.cancelled.is_set()

    # -- rounds ------------------------------------------------------------------------
    def begin_round(self, index: int, row: int | None = None) -> RoundRecord:
        """Record the start of a decoding round (``row`` None: all rows of a batch)."""
        rnd = RoundRecord(index=index, start=time.perf_counter(), row=row)
        self.timeline.rounds.append(rnd)
        return rnd

    @staticmethod
    def end_round(rnd: RoundRecord) -> None:
        rnd.end = time.perf_counter()

    def settle(self, conv: Conversation, new_ids: Sequence[int], *, eos_token_last: bool) -> list[int] | None:
        """After ``conv`` stopped: keep ``new_ids`` (this round's decoded ids), finish its
        calls and append their results. Returns the appended ids if it resumes, else None.
        ``eos_token_last``: whether ``new_ids`` end with the EOS id of an ``"eos"`` stop.

        The engine sets ``conv.stop`` first when it stopped the conversation itself
        (``"length"``, ``"error"``).
        """
        if self.cancelled:
            conv.stop = "cancelled"
            for handler in conv.handlers:  # closed, never waited for
                if handler.call is not None:
                    handler.call.close()
            return None
        conv.close_round(new_ids, eos_token_last=eos_token_last)
        before = len(conv.text)
        appended = conv.finish_calls(tokenizer=self.tokenizer, on_result=self._record)
        if appended is None:
            return None
        self.notify(StreamEvent("result", conv.row, appended, shown=conv.shown_since(before)))
        if not (conv.resumes and conv.round_index < self.max_rounds and conv.generated < conv.budget):
            return None
        if self.replayer is not None and conv.stop == "abort":
            for handler in conv.handlers:
                self.replayer.skip_past(conv.row, conv.generated, handler.syntax.closer)
        suffix = self.encode_text(appended)
        conv.append(appended, suffix)
        return suffix

    def output(self) -> ConveyorOutput:
        """The request's result, once every conversation is done."""
        self.timeline.end = time.perf_counter()
        self.timeline.feed = sum(c.feed_seconds for c in self.conversations)
        self.timeline.token_times = [c.token_times for c in self.conversations]
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        return ConveyorOutput(
            texts=[c.text for c in self.conversations],
            sequences=_layout(self.input_ids, [c.tokens for c in self.conversations], pad),
            tool_calls=list(self.timeline.calls),
            timeline=self.timeline,
            stop_reasons=[c.stop or "length" for c in self.conversations],
            errors=[c.error for c in self.conversations],
            messages=[c.messages() for c in self.conversations],
            caller_calls=[list(c.caller_calls) for c in self.conversations],
            contents=[c.content for c in self.conversations],
        )

    # -- internals ---------------------------------------------------------------------
    def _open_call(self, conv: Conversation, event: CallEvent) -> CallHandler:
        """Called on the decoding thread when ``conv`` opens a call; returns at once."""
        tools = self.tools_for_row(conv.row)
        if event.tool == "":  # a JSON call names its tool inside

            lazy_turn = self.parallel_tool_calls and self.mode == "lazy"  # runs them in order at the end

            def open_tool(name: str):
                if name in self.caller_tools:  # nothing runs here: the call is handed back
                    return self.caller_tools[name], CallerCall(self.caller_tools[name])
                tool = tools[name]
                call = self.call_log.open(conv.row, conv.round_index, tool)
                if self.parallel_tool_calls and not lazy_turn and tool.side_effect in ORDERED:
                    handler.wait_for(conv.ordered_calls[-1] if conv.ordered_calls else None)
                    conv.ordered_calls.append(handler)
                return tool, call

            handler = JsonCallHandler(open_tool, [*tools, *self.caller_tools], event.syntax,
                                      at_turn_end=self.parallel_tool_calls, hold_until_finish=lazy_turn)
            return handler
        tool = tools[event.tool]
        call = self.call_log.open(conv.row, conv.round_index, tool)
        return UnitCallHandler(tool, call, tool.make_parser(), event.syntax)

    def _record(self, handler: CallHandler, result: ToolResult) -> None:
        if handler.call is not None and not handler.for_caller:
            self.call_log.finish(handler.call, result)


def _layout(prompt_block: torch.Tensor, continuations: list[list[int]], pad_id: int) -> torch.Tensor:
    """The prompt block, then each row's continuation, right-padded (``generate``'s layout)."""
    width = max((len(c) for c in continuations), default=0)
    rows = [c + [pad_id] * (width - len(c)) for c in continuations]
    tail = torch.tensor(rows, dtype=prompt_block.dtype, device=prompt_block.device).reshape(len(rows), width)
    return torch.cat([prompt_block, tail], dim=1)
