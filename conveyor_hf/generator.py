"""``ConveyorGenerator``: the generate → stop → finish → re-prompt loop.

One ``generate`` call runs rounds of ``model.generate``. In each round the
:class:`~conveyor_hf.hooks.ConveyorHook` feeds decoded text to the tools while they are
being written; when a row's tool call closes, that row stops. Between rounds the loop
waits only for unfinished tool work, appends each result in the model's own format,
tokenizes just the appended text, and resumes with the same ``DynamicCache``, so only
the appended tokens are prefilled. It ends at EOS, ``max_new_tokens`` (counted over the
whole answer) or ``max_tool_rounds``.

Example::

    from conveyor_hf import ConveyorGenerator, load_default_model
    from conveyor_hf.tools import PythonTool

    model, tokenizer = load_default_model()
    with ConveyorGenerator(model, tokenizer, tools=[PythonTool()]) as gen:
        out = gen.generate([{"role": "user", "content": "Use Python to compute 2**100."}],
                           max_new_tokens=200)
    print(out.text)
    print(out.timeline.summary())
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from conveyor_hf.formats import (
    JSON_CALL,
    JsonCallHandler,
    UnitCallHandler,
    render_result,
    tool_instructions,
    tool_turn_suffix,
    unique_syntaxes,
)
from conveyor_hf.hooks import ConveyorHook, IncrementalDetokenizer, RowState
from conveyor_hf.replay import ReplayLogitsProcessor
from conveyor_hf.scheduler import MODES, Mode, Scheduler
from conveyor_hf.timeline import CallRecord, RoundRecord, Timeline
from conveyor_hf.tools.base import Tool, UnitRecord
from parsers.calls import CallDetector, CallEvent

#: ``max_new_tokens`` when neither the call nor its generation config sets one.
DEFAULT_MAX_NEW_TOKENS = 256

Messages = list[dict[str, Any]]


@dataclass
class StreamEvent:
    """What a ``stream`` callback receives, as it happens.

    ``kind`` is ``"text"`` (a delta of model text), ``"unit"`` (a tool unit finished;
    ``record`` holds it; usually sent from a tool worker thread, so a callback must be
    thread-safe) or ``"result"`` (the text
    appended after a call, as the model will see it).
    """

    kind: Literal["text", "unit", "result"]
    row: int
    text: str = ""
    tool: str = ""
    record: UnitRecord | None = None


@dataclass
class ConveyorOutput:
    """The answer(s) of one ``generate`` call.

    ``texts`` has one string per batch row: the model's text with tool results included
    as they were re-prompted. ``sequences`` are token ids laid out like
    ``model.generate``'s (the prompt block, then each row's continuation, right-padded).
    """

    texts: list[str]
    sequences: torch.LongTensor
    tool_calls: list[CallRecord]
    timeline: Timeline
    stop_reasons: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The answer of a single-row call (use ``texts`` for a batch)."""
        if len(self.texts) != 1:
            raise ValueError(f"this output has {len(self.texts)} rows; read out.texts[i]")
        return self.texts[0]


class ConveyorGenerator:
    """Tool partial execution around ``model.generate``.

    Args:
      model: any causal LM with ``generate`` (transformers ``PreTrainedModel``).
      tokenizer: its tokenizer; found from ``model.name_or_path`` when omitted.
      tools: tool instances; each is called by its own syntax (``conveyor_hf.formats``).
      mode: ``"partial"`` runs each unit as soon as it is decoded; ``"lazy"`` (the
        baseline) runs a call's units when the call closes.
      max_tool_rounds: tool calls per answer before the loop stops re-prompting.
      tool_prompt: add a system message describing the tools to chat inputs (True), not
        (False), or use the given text.
      on_error: ``"continue"`` (default) or ``"abort"``: stop decoding a call as soon as
        one of its units fails, close it and re-prompt with the error.
      json_calls: also recognise ``<tool_call>{"name": …, "arguments": …}</tool_call>``
        calls, whose results go back as a ``tool`` turn of the chat template.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        tools: Iterable[Tool] = (),
        *,
        mode: Mode = "partial",
        max_tool_rounds: int = 8,
        tool_prompt: bool | str = True,
        on_error: Literal["continue", "abort"] = "continue",
        json_calls: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; use mode='partial' or mode='lazy'")
        if on_error not in ("continue", "abort"):
            raise ValueError(f"on_error={on_error!r} is not supported; use 'continue' or 'abort'")
        if max_tool_rounds < 0:
            raise ValueError(f"max_tool_rounds={max_tool_rounds} must be >= 0")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else _find_tokenizer(model)
        self.tools: list[Tool] = list(tools)
        for tool in self.tools:
            if not isinstance(tool, Tool):
                raise TypeError(f"tools must be conveyor_hf.tools.Tool instances, got {tool!r}")
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        self.syntaxes = unique_syntaxes(self.tools)
        self.json_calls = json_calls and bool(self.tools)
        if self.json_calls:
            self.syntaxes.append(JSON_CALL)
        self.mode: Mode = mode
        self.max_tool_rounds = max_tool_rounds
        self.tool_prompt = tool_prompt
        self.on_error = on_error
        self._row_tools: dict[int, dict[str, Tool]] = {0: {t.name: t for t in self.tools}}

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close every tool (kernels, connections), including per-row forks."""
        for tools in self._row_tools.values():
            for tool in tools.values():
                tool.close()

    def __enter__(self) -> "ConveyorGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tools_for_row(self, row: int) -> dict[str, Tool]:
        """Row 0 uses the tools given; other rows get ``fork()``s (own kernels, own state)."""
        if row not in self._row_tools:
            self._row_tools[row] = {t.name: t.fork() for t in self.tools}
        return self._row_tools[row]

    # -- inputs ----------------------------------------------------------------------
    def build_messages(self, messages: Messages) -> Messages:
        """Chat messages with the tool instructions added to (or as) the system message."""
        if not self.tools or self.tool_prompt is False:
            return list(messages)
        note = (self.tool_prompt if isinstance(self.tool_prompt, str)
                else tool_instructions(self.tools, json_calls=self.json_calls))
        messages = [dict(m) for m in messages]
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{note}"
        else:
            messages.insert(0, {"role": "system", "content": note})
        return messages

    def encode(self, inputs: Any, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn messages, prompt strings or ids (single or batch) into left-padded ids + mask."""
        tok = self.tokenizer
        if isinstance(inputs, torch.Tensor):
            ids = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
            if attention_mask is None:
                attention_mask = torch.ones_like(ids)
            return ids.long(), attention_mask.long().reshape(ids.shape)
        if isinstance(inputs, str):
            texts, special = [inputs], True
        elif _is_conversation(inputs):
            texts, special = [self._render_chat(inputs)], False
        elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
            texts, special = list(inputs), True
        elif isinstance(inputs, (list, tuple)) and inputs and all(_is_conversation(x) for x in inputs):
            texts, special = [self._render_chat(c) for c in inputs], False
        else:
            raise TypeError(
                "generate() takes chat messages (a list of {'role', 'content'} dicts), a list of "
                f"such lists, a prompt string or a list of them, or input_ids; got {type(inputs).__name__}"
            )
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=special)
        finally:
            tok.padding_side = side
        return enc["input_ids"], enc["attention_mask"]

    def _render_chat(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "this tokenizer has no chat template; pass a prompt string or input_ids instead of messages"
            )
        extra = {}
        template = self.tokenizer.chat_template
        if self.json_calls and isinstance(template, str) and "tools" in template:
            extra["tools"] = [tool.schema() for tool in self.tools]  # the template renders them
        return self.tokenizer.apply_chat_template(
            self.build_messages(messages), tokenize=False, add_generation_prompt=True, **extra
        )

    # -- the loop --------------------------------------------------------------------
    def generate(
        self,
        inputs: Any = None,
        *,
        max_tool_rounds: int | None = None,
        stream: Callable[[StreamEvent], None] | None = None,
        replay: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ConveyorOutput:
        """Generate an answer, running tool calls while they are decoded.

        ``inputs``: chat messages, a list of conversations, a prompt string (or list), or
        ``input_ids`` (also accepted as a keyword). Every other keyword goes to
        ``model.generate`` in every round (``generation_config``, ``do_sample``,
        ``logits_processor``, ``stopping_criteria``, ...); ``max_new_tokens`` counts over
        the whole answer. ``stream`` receives :class:`StreamEvent` s as they happen.
        ``replay`` (one text per row) forces a recorded answer through the model token by
        token (see :mod:`conveyor_hf.replay`): real decode cost, fixed text.
        """
        started = time.perf_counter()
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
            if inputs is None:
                raise TypeError("generate() needs inputs: messages, a prompt string or input_ids")
        ids, mask = self.encode(inputs, kwargs.pop("attention_mask", None))
        config, extra = self._generation_config(kwargs)
        ids, mask = _expand(ids, mask, config.num_return_sequences or 1)
        config.num_return_sequences = 1
        request = _Request(
            self, ids.to(self.model.device), mask.to(self.model.device), config, extra,
            budget=self._budget(config, kwargs, ids.shape[1]),
            rounds=self.max_tool_rounds if max_tool_rounds is None else max_tool_rounds,
            stream=stream, started=started,
        )
        if replay is not None:
            request.replay(replay)
        return request.run()

    def _render(self, handler, result, text_so_far: str, unclosed) -> str:
        """The text appended after a call: a ``tool`` turn for JSON calls when the chat
        template has one, otherwise an output block in the assistant's turn."""
        if isinstance(handler, JsonCallHandler):
            body = result.output.strip("\n") or (f"Error: {result.error}" if result.error else "(no output)")
            name = handler.tool.name if handler.tool is not None else "tool"
            suffix = tool_turn_suffix(self.tokenizer, name, body)
            if suffix is not None:
                return (unclosed.closer if unclosed is not None else "") + suffix
        return render_result(result, text_so_far, unclosed=unclosed)

    def _replay_processor(self, replay: Sequence[str], rows: int, eos: set[int],
                          hook: ConveyorHook) -> ReplayLogitsProcessor:
        if isinstance(replay, str):
            replay = [replay]
        if len(replay) != rows:
            raise ValueError(f"replay has {len(replay)} texts for {rows} rows; give one text per row")
        if not eos:
            raise ValueError("replay needs an EOS token to end each answer; set generation_config.eos_token_id")
        scripts = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in replay]
        processor = ReplayLogitsProcessor(scripts, eos_token_id=min(eos), tokenizer=self.tokenizer)
        processor.bind(hook)
        return processor

    # -- configuration ---------------------------------------------------------------
    def _generation_config(self, kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any]]:
        """The effective generation config, and the keywords that are not part of it."""
        base = kwargs.pop("generation_config", None) or self.model.generation_config
        config = copy.deepcopy(base)
        extra = config.update(**kwargs)
        if (config.num_beams or 1) > 1:
            raise ValueError(
                f"num_beams={config.num_beams} is not supported with tool calls (a beam cannot run tools "
                "of its own); use num_beams=1, with do_sample=True and num_return_sequences for several answers"
            )
        if extra.get("assistant_model") is not None:
            raise ValueError("assistant_model (assisted decoding) is not supported with tool calls; remove it")
        for key in ("return_dict_in_generate", "output_scores", "output_logits"):
            extra.pop(key, None)
        config.return_dict_in_generate = False
        return config, extra

    @staticmethod
    def _budget(config: GenerationConfig, kwargs: dict[str, Any], prompt_length: int) -> int:
        if config.max_new_tokens is not None:
            return int(config.max_new_tokens)
        if "max_length" in kwargs and config.max_length is not None:
            return max(1, int(config.max_length) - prompt_length)
        return DEFAULT_MAX_NEW_TOKENS


class _Request:
    """One ``generate`` call: its rows, tools in flight, hook, cache and timeline.

    ``run`` alternates two steps until no row needs another round: ``_decode`` (one
    ``model.generate`` call, during which the hook feeds the tools) and ``_settle`` (per
    row: keep its tokens, wait for its calls, append their results, decide whether it
    resumes). Rows that resume go on together in the next round on the same cache.
    """

    def __init__(self, gen: ConveyorGenerator, ids: torch.Tensor, mask: torch.Tensor, config: GenerationConfig,
                 extra: dict[str, Any], *, budget: int, rounds: int,
                 stream: Callable[[StreamEvent], None] | None, started: float) -> None:
        self.gen, self.tokenizer = gen, gen.tokenizer
        self.ids, self.mask, self.config, self.extra = ids, mask, config, extra
        self.rounds = rounds
        self.round_index = 0
        self.eos = _eos_ids(config, self.tokenizer)
        if config.pad_token_id is None:
            config.pad_token_id = min(self.eos) if self.eos else 0
        self.user_criteria = list(extra.pop("stopping_criteria", None) or [])
        cache = extra.pop("past_key_values", None)
        self.cache = cache if cache is not None else _new_cache(gen.model)
        self.timeline = Timeline(start=started, mode=gen.mode)
        self.notify = stream or (lambda event: None)
        # Without a stream callback nothing is built per text delta or unit (hot path).
        self.scheduler = Scheduler(
            self.timeline, gen.mode,
            on_unit_done=None if stream is None else (
                lambda row, name, rec: stream(StreamEvent("unit", row, rec.output, name, rec))),
        )
        self.prompt_block = ids
        prompts = [ids[i][mask[i].bool()].tolist() for i in range(ids.shape[0])]
        self.states = [
            RowState(
                row=i,
                detector=CallDetector(gen.syntaxes),
                detokenizer=IncrementalDetokenizer(self.tokenizer, prompt),
                budget=budget,
                prompt=prompt,
            )
            for i, prompt in enumerate(prompts)
        ]
        self.hook = ConveyorHook(
            self.eos, self._open_call,
            on_text=None if stream is None else (lambda row, text: stream(StreamEvent("text", row, text))),
            abort_on_error=gen.on_error == "abort",
        )
        self.replayer: ReplayLogitsProcessor | None = None

    def replay(self, texts: Sequence[str]) -> None:
        """Force ``texts`` (one per row) through the model instead of letting it choose."""
        self.replayer = self.gen._replay_processor(texts, len(self.states), self.eos, self.hook)
        processors = list(self.extra.pop("logits_processor", None) or [])
        self.extra["logits_processor"] = LogitsProcessorList([*processors, self.replayer])

    def run(self) -> ConveyorOutput:
        active = list(self.states)
        while True:
            rnd = RoundRecord(index=self.round_index, start=time.perf_counter())
            self.timeline.rounds.append(rnd)
            seqs = self._decode(active, rnd)
            start_len = self.ids.shape[1]
            resume = []
            for pos, state in enumerate(active):
                suffix = self._settle(state, seqs[pos], start_len, rnd)
                if suffix is not None:
                    resume.append((pos, suffix, state.stop_length - start_len - int(state.dropped_eos)))
            if not resume:
                rnd.end = time.perf_counter()
                break
            self.ids, self.mask = _next_inputs(seqs, self.mask, start_len, resume, self.config.pad_token_id)
            positions = [pos for pos, _, _ in resume]
            if len(positions) < len(active):
                self.cache.batch_select_indices(torch.tensor(positions, device=seqs.device))
            active = [active[pos] for pos in positions]
            self.round_index += 1
            rnd.end = time.perf_counter()
        self.timeline.end = time.perf_counter()
        return ConveyorOutput(
            texts=[s.text for s in self.states],
            sequences=_layout(self.prompt_block, [s.tokens for s in self.states], self.config.pad_token_id),
            tool_calls=list(self.timeline.calls),
            timeline=self.timeline,
            stop_reasons=[s.stop or "length" for s in self.states],
        )

    def _open_call(self, state: RowState, event: CallEvent):
        """Called by the hook (decode thread) when ``state``'s row opens a call."""
        tools = self.gen.tools_for_row(state.row)
        if event.tool == "":  # a JSON call names its tool inside

            def open_tool(name: str):
                return tools[name], self.scheduler.open(state.row, self.round_index, tools[name])

            return JsonCallHandler(open_tool, list(tools), event.syntax)
        tool = tools[event.tool]
        call = self.scheduler.open(state.row, self.round_index, tool)
        return UnitCallHandler(tool, call, tool.make_parser(), event.syntax)

    def _decode(self, active: list[RowState], rnd: RoundRecord) -> torch.Tensor:
        """One ``model.generate`` call over the ``active`` rows; returns its sequences."""
        self.hook.start_round(active)
        round_config = copy.deepcopy(self.config)
        round_config.max_new_tokens = max(s.budget - s.generated for s in active)
        round_config.max_length = None
        counter = _PrefillCounter(self.gen.model)
        try:
            out = self.gen.model.generate(
                input_ids=self.ids,
                attention_mask=self.mask,
                generation_config=round_config,
                stopping_criteria=StoppingCriteriaList([*self.user_criteria, self.hook]),
                past_key_values=self.cache,
                **self.extra,
            )
        finally:
            counter.remove()
        rnd.decode_end = time.perf_counter()
        rnd.prefill_tokens = counter.first
        return out if isinstance(out, torch.Tensor) else out.sequences

    def _settle(self, state: RowState, seq: torch.Tensor, start_len: int, rnd: RoundRecord) -> list[int] | None:
        """After a round: keep the row's tokens, finish its calls and append their
        results. Returns the appended ids if the row resumes, else None."""
        if state.stop is None:  # max_new_tokens, or a caller's stopping criterion
            state.stop, state.stop_length = "length", seq.shape[0]
        self.hook.end_of_text(state)
        # An EOS written inside an open call closes the call; the EOS is dropped
        # (masked in the next round) so the model can read the result and go on.
        state.dropped_eos = state.stop == "eos" and any(h.unclosed for h in state.handlers)
        state.tokens.extend(seq[start_len:state.stop_length - int(state.dropped_eos)].tolist())
        rnd.new_tokens += state.stop_length - start_len
        if not state.handlers:
            return None
        appended = ""
        for handler in state.handlers:
            result = handler.finish(aborted=state.stop == "abort")
            if handler.call is not None:
                self.scheduler.finish(handler.call, result)
            unclosed = handler.syntax if (handler.unclosed or state.stop == "abort") else None
            appended += self.gen._render(handler, result, state.text + appended, unclosed)
        state.pieces.append(appended)
        self.notify(StreamEvent("result", state.row, appended))
        resumes = state.stop in ("call", "abort") or state.dropped_eos
        if not (resumes and self.round_index < self.rounds and state.generated < state.budget):
            return None
        if self.replayer is not None and state.stop == "abort":
            for handler in state.handlers:
                self.replayer.skip_past(state.row, state.generated, handler.syntax.closer)
        suffix = self.tokenizer(appended, add_special_tokens=False)["input_ids"]
        state.tokens.extend(suffix)
        state.detector.skip(appended)
        state.detokenizer.restart(state.prompt + state.tokens)
        return suffix


class _PrefillCounter:
    """Counts the tokens the model processes in the first forward of a round."""

    def __init__(self, model) -> None:
        self.first = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is None and kwargs.get("inputs_embeds") is not None:
            ids = kwargs["inputs_embeds"][..., 0]
        if ids is not None:
            self.first = int(ids.shape[1])
        self.remove()

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _next_inputs(
    seqs: torch.Tensor, mask: torch.Tensor, start_len: int,
    resume: Sequence[tuple[int, list[int], int]], pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask for the next round: each resumed row's sequence, its generated tokens
    past the stop (and a dropped EOS) masked out, then its appended ids right-aligned."""
    device = seqs.device
    gen_len = seqs.shape[1] - start_len
    width = max(len(suffix) for _, suffix, _ in resume)
    rows_ids, rows_mask = [], []
    for pos, suffix, kept in resume:
        gen_mask = torch.zeros(gen_len, dtype=mask.dtype, device=device)
        gen_mask[:kept] = 1
        pad = width - len(suffix)
        suffix_ids = torch.tensor([pad_id] * pad + suffix, dtype=seqs.dtype, device=device)
        suffix_mask = torch.tensor([0] * pad + [1] * len(suffix), dtype=mask.dtype, device=device)
        rows_ids.append(torch.cat([seqs[pos], suffix_ids]))
        rows_mask.append(torch.cat([mask[pos], gen_mask, suffix_mask]))
    return torch.stack(rows_ids), torch.stack(rows_mask)


def _layout(prompt_block: torch.Tensor, continuations: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max((len(c) for c in continuations), default=0)
    rows = [c + [pad_id] * (width - len(c)) for c in continuations]
    tail = torch.tensor(rows, dtype=prompt_block.dtype, device=prompt_block.device).reshape(len(rows), width)
    return torch.cat([prompt_block, tail], dim=1)


def _expand(ids: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n == 1:
        return ids, mask
    return ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)


def _eos_ids(config: GenerationConfig, tokenizer) -> set[int]:
    eos = config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])}


def _new_cache(model) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def _is_conversation(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, dict) and "role" in m for m in value
    )


def _find_tokenizer(model):
    from transformers import AutoTokenizer

    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name:
        raise ValueError(
            "no tokenizer given and none can be found from the model (model.name_or_path is empty); "
            "pass ConveyorGenerator(model, tokenizer)"
        )
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ValueError(
            f"no tokenizer given and AutoTokenizer.from_pretrained({name!r}) failed ({exc}); "
            "pass ConveyorGenerator(model, tokenizer)"
        ) from exc
