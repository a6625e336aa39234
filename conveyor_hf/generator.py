"""``ConveyorGenerator``: the generate → stop → finish → re-prompt loop, over any engine.

``generate`` renders the prompt, builds a :class:`~conveyor_hf.loop.ToolLoop` (one
:class:`~conveyor_hf.conversation.Conversation` per batch row) and hands it to the
engine. The engine decodes and feeds each conversation, which starts tool units while
they are written; when a conversation's call closes, the engine stops it, the loop waits
only for unfinished tool work, appends the result in the model's own format, and the
engine resumes (``model.generate`` on the same ``DynamicCache``, so only the appended
tokens are prefilled; a remote server through its prefix cache). It ends at EOS,
``max_new_tokens`` (counted over the whole answer) or ``max_tool_rounds``.

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
import threading
import time
from typing import Any, Callable, Iterable, Literal, Sequence

import torch
from transformers import GenerationConfig

from conveyor_hf.call_log import MODES, Mode
from conveyor_hf.engines.base import Engine
from conveyor_hf.engines.generate import GenerateEngine
from conveyor_hf.formats import JSON_CALL, call_text, tool_instructions, unique_syntaxes
from conveyor_hf.loop import ToolLoop
from conveyor_hf.outputs import ConveyorOutput, StreamEvent
from conveyor_hf.streaming import ConveyorStream, StreamerBridge
from conveyor_hf.tools.base import Tool
from conveyor_hf.tools.caller import CallerTool

__all__ = ["ConveyorGenerator", "ConveyorOutput", "StreamEvent", "DEFAULT_MAX_NEW_TOKENS"]

#: ``max_new_tokens`` when neither the call nor its generation config sets one.
DEFAULT_MAX_NEW_TOKENS = 256

Messages = list[dict[str, Any]]


class ConveyorGenerator:
    """Tool partial execution around any decoding engine (``model.generate`` by default).

    Args:
      model: any causal LM with ``generate`` (transformers ``PreTrainedModel``), decoded
        in-process by :class:`~conveyor_hf.engines.GenerateEngine`; or an
        :class:`~conveyor_hf.engines.Engine` (e.g. ``RemoteEngine(url, model=...)``).
      tokenizer: its tokenizer; found from ``model.name_or_path`` when omitted (required
        with a remote engine: the client renders the chat template itself).
      tools: tool instances, run here while the model decodes; each is called by its own
        syntax (``conveyor_hf.formats``). A function schema (``{"type": "function",
        "function": {"name", "description", "parameters"}}``, as chat templates and the
        OpenAI API take them) is a tool the *caller* runs: a call of it ends the answer
        with stop reason ``"tool_calls"`` and the call in ``ConveyorOutput.caller_calls``;
        send its result back as a ``tool`` message and generate again.
      mode: ``"partial"`` runs each unit as soon as it is decoded; ``"lazy"`` (the
        baseline) runs a call's units when the call closes.
      max_tool_rounds: tool calls per answer before the loop stops re-prompting.
      tool_prompt: add a system message describing the tools to chat inputs (True), not
        (False), or use the given text.
      on_error: ``"continue"`` (default) or ``"abort"``: stop decoding a call as soon as
        one of its units fails, close it and re-prompt with the error.
      json_calls: also recognise ``<tool_call>{"name": …, "arguments": …}</tool_call>``
        calls, whose results go back as ``tool`` turns of the chat template.
      parallel_tool_calls: JSON calls of one assistant turn run as each closes while the
        model writes the rest of the turn, and their results come back together as
        ``tool`` turns when the turn ends (True, the default: the conversation shape chat
        templates are trained on). False stops decoding at every ``</tool_call>`` and
        appends that call's result at once. Native syntaxes (```` ```python ````, tags)
        always stop at their closer.
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
        parallel_tool_calls: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; use mode='partial' or mode='lazy'")
        if on_error not in ("continue", "abort"):
            raise ValueError(f"on_error={on_error!r} is not supported; use 'continue' or 'abort'")
        if max_tool_rounds < 0:
            raise ValueError(f"max_tool_rounds={max_tool_rounds} must be >= 0")
        self.engine: Engine = model if isinstance(model, Engine) else GenerateEngine(model)
        self._owns_engine = not isinstance(model, Engine)  # an engine passed in may be shared: not ours to close
        self.model = getattr(self.engine, "model", None)
        if tokenizer is None:
            if self.model is None:
                raise ValueError(
                    f"{type(self.engine).__name__} needs the model's tokenizer (the client renders the chat "
                    "template and counts tokens): pass ConveyorGenerator(engine, tokenizer, ...)"
                )
            tokenizer = _find_tokenizer(self.model)
        self.tokenizer = tokenizer
        self.tools, self.caller_tools = _split_tools(tools)
        names = [t.name for t in [*self.tools, *self.caller_tools]]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if self.caller_tools and not json_calls:
            raise ValueError("function schemas in tools are called as <tool_call> JSON calls; they cannot be "
                             "combined with json_calls=False")
        self.syntaxes = unique_syntaxes(self.tools)
        self.json_calls = json_calls and bool(self.tools or self.caller_tools)
        if self.json_calls:
            self.syntaxes.append(JSON_CALL)
        self.mode: Mode = mode
        self.max_tool_rounds = max_tool_rounds
        self.tool_prompt = tool_prompt
        self.on_error = on_error
        self.parallel_tool_calls = parallel_tool_calls
        self._row_tools: dict[int, dict[str, Tool]] = {0: {t.name: t for t in self.tools}}

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close every tool (kernels, connections), including per-row forks, and the engine
        if this generator built it (an engine passed in is closed by its owner)."""
        for tools in self._row_tools.values():
            for tool in tools.values():
                tool.close()
        if self._owns_engine:
            self.engine.close()

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
        if not (self.tools or self.caller_tools) or self.tool_prompt is False:
            return list(messages)
        note = (self.tool_prompt if isinstance(self.tool_prompt, str)
                else tool_instructions(self.tools, json_calls=self.json_calls, caller_tools=self.caller_tools))
        messages = [dict(m) for m in messages]
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{note}"
        else:
            messages.insert(0, {"role": "system", "content": note})
        return messages

    def encode(self, inputs: Any, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn messages, prompt strings or ids (single or batch) into left-padded ids + mask."""
        ids, mask, _ = self._encode(inputs, attention_mask)
        return ids, mask

    def render_prompts(self, inputs: Any) -> tuple[list[str], bool] | None:
        """The prompt texts of ``inputs`` and whether special tokens are added when they
        are tokenized; None for ``input_ids``."""
        if isinstance(inputs, torch.Tensor):
            return None
        if isinstance(inputs, str):
            return [inputs], True
        if _is_conversation(inputs):
            return [self._render_chat(inputs)], False
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(x, str) for x in inputs):
            return list(inputs), True
        if isinstance(inputs, (list, tuple)) and inputs and all(_is_conversation(x) for x in inputs):
            return [self._render_chat(c) for c in inputs], False
        raise TypeError(
            "generate() takes chat messages (a list of {'role', 'content'} dicts), a list of "
            f"such lists, a prompt string or a list of them, or input_ids; got {type(inputs).__name__}"
        )

    def _encode(self, inputs: Any, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
        """Left-padded ids + mask, and the prompt texts when the inputs were text."""
        rendered = self.render_prompts(inputs)
        if rendered is None:
            ids = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
            if attention_mask is None:
                attention_mask = torch.ones_like(ids)
            return ids.long(), attention_mask.long().reshape(ids.shape), None
        texts, special = rendered
        tok = self.tokenizer
        rows = [tok(text, add_special_tokens=special)["input_ids"] for text in texts]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(r) for r in rows)
        # Left-padded by hand: the caller's tokenizer (maybe shared by threads) is never changed.
        ids = torch.tensor([[pad or 0] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return ids, mask, texts

    def _render_chat(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                "this tokenizer has no chat template; pass a prompt string or input_ids instead of messages"
            )
        extra = {}
        template = self.tokenizer.chat_template
        if self.json_calls and isinstance(template, str) and "tools" in template:
            extra["tools"] = [tool.schema() for tool in [*self.tools, *self.caller_tools]]  # the template renders them
        messages = self.build_messages(messages)
        if not (isinstance(template, str) and "tool_calls" in template):
            messages = _calls_as_text(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)

    # -- the loop --------------------------------------------------------------------
    def generate(
        self,
        inputs: Any = None,
        *,
        max_tool_rounds: int | None = None,
        stream: Callable[[StreamEvent], None] | None = None,
        replay: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        **kwargs: Any,
    ) -> ConveyorOutput:
        """Generate an answer, running tool calls while they are decoded.

        ``inputs``: chat messages, a list of conversations, a prompt string (or list), or
        ``input_ids`` (also accepted as a keyword). Every other keyword goes to the
        engine in every round (for ``model.generate``: ``generation_config``,
        ``do_sample``, ``logits_processor``, ``stopping_criteria``, ``cache`` (or
        ``past_key_values``), ...); ``max_new_tokens`` counts over the whole answer.
        ``stream`` receives :class:`StreamEvent` s as they happen; ``streamer`` (any
        transformers ``BaseStreamer``, one row) is shown the whole answer, tool results
        included, and ended once. ``replay`` (one text per row) forces a recorded answer
        through the model token by token (see :mod:`conveyor_hf.replay`): real decode
        cost, fixed text. Setting the
        ``cancel`` event (from any thread) stops every row at its next token without
        waiting for tool work (``stop_reasons`` ``"cancelled"``).
        """
        started = time.perf_counter()
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
            if inputs is None:
                raise TypeError("generate() needs inputs: messages, a prompt string or input_ids")
        if replay is not None and not self.engine.supports_replay:
            raise ValueError(
                f"replay= needs access to the logits, which {type(self.engine).__name__} does not have; "
                "use the generate engine (ConveyorGenerator(model, ...)) to replay a recorded answer"
            )
        cache = _pop_cache(kwargs)
        streamer = kwargs.pop("streamer", None)
        ids, mask, texts = self._encode(inputs, kwargs.pop("attention_mask", None))
        config, extra = self._generation_config(kwargs)
        n = config.num_return_sequences or 1
        ids, mask = _expand(ids, mask, n)
        texts = [t for t in texts for _ in range(n)] if texts is not None else None
        config.num_return_sequences = 1
        bridge = None
        if streamer is not None:
            shown = ids[0][mask[0].bool()] if ids.shape[0] == 1 else ids  # the prompt, unpadded
            bridge = StreamerBridge(streamer, self.tokenizer, shown, then=stream)
            stream = bridge
        eos = _eos_ids(config, self.tokenizer)
        if config.pad_token_id is None:
            config.pad_token_id = min(eos) if eos else 0
        loop = ToolLoop(
            tokenizer=self.tokenizer,
            tools_for_row=self.tools_for_row,
            syntaxes=self.syntaxes,
            mode=self.mode,
            abort_on_error=self.on_error == "abort",
            input_ids=ids.to(self.engine.device),
            attention_mask=mask.to(self.engine.device),
            prompt_texts=texts,
            config=config,
            extra=extra,
            eos_token_ids=eos,
            budget=self._budget(config, kwargs, ids.shape[1]),
            max_rounds=self.max_tool_rounds if max_tool_rounds is None else max_tool_rounds,
            cache=cache,
            stream=stream,
            started=started,
            cancel=cancel,
            parallel_tool_calls=self.parallel_tool_calls,
            caller_tools=self.caller_tools,
        )
        if replay is not None:
            loop.replay(replay)
        if bridge is None:
            self.engine.run(loop)
            return loop.output()
        bridge.start()
        try:
            self.engine.run(loop)
        finally:
            bridge.end()
        return loop.output()

    def stream(self, inputs: Any = None, **kwargs: Any) -> ConveyorStream:
        """``generate`` on a background thread, as an iterator of :class:`StreamEvent` s
        (text deltas, finished tool units, appended results); the final
        :class:`ConveyorOutput` is ``.output`` once the iterator is exhausted. Breaking
        out of the loop early cancels the generation (use it as a context manager)."""
        return ConveyorStream(self.generate, inputs, kwargs)

    # -- configuration ---------------------------------------------------------------
    def _generation_config(self, kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any]]:
        """The effective generation config, and the keywords that are not part of it."""
        base = kwargs.pop("generation_config", None) or self.engine.default_generation_config()
        config = copy.deepcopy(base)
        extra = config.update(**kwargs)
        self.engine.check_options(config, extra)
        return config, extra

    @staticmethod
    def _budget(config: GenerationConfig, kwargs: dict[str, Any], prompt_length: int) -> int:
        if config.max_new_tokens is not None:
            return int(config.max_new_tokens)
        if "max_length" in kwargs and config.max_length is not None:
            return max(1, int(config.max_length) - prompt_length)
        return DEFAULT_MAX_NEW_TOKENS


def _pop_cache(kwargs: dict[str, Any]) -> Any:
    """The caller's KV cache, given as ``cache`` or by its older name ``past_key_values``."""
    cache, legacy = kwargs.pop("cache", None), kwargs.pop("past_key_values", None)
    if cache is not None and legacy is not None and cache is not legacy:
        raise ValueError("pass the KV cache once: cache=... (past_key_values is its older name), not both")
    return cache if cache is not None else legacy


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


def _split_tools(tools: Iterable[Any]) -> tuple[list[Tool], list[CallerTool]]:
    """The tools run here and the tools the caller runs (function schemas)."""
    own: list[Tool] = []
    callers: list[CallerTool] = []
    for tool in tools:
        if isinstance(tool, Tool):
            own.append(tool)
        elif isinstance(tool, CallerTool):
            callers.append(tool)
        elif isinstance(tool, dict):
            callers.append(CallerTool.from_schema(tool))
        else:
            raise TypeError(
                "tools must be conveyor_hf.tools.Tool instances (run here; wrap a function with "
                "conveyor_hf.tools.tool) or function schema dicts (run by the caller), got "
                f"{tool!r}"
            )
    return own, callers


def _calls_as_text(messages: Messages) -> Messages:
    """Messages whose assistant ``tool_calls`` are written into the content as
    ``<tool_call>`` JSON calls, for chat templates that render only the content."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        if calls:
            message = {key: value for key, value in message.items() if key != "tool_calls"}
            message["content"] = (message.get("content") or "") + "".join(
                call_text(call["function"]["name"], call["function"].get("arguments")) for call in calls)
        out.append(message)
    return out
