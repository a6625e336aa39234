"""``PromptBuilder``: a request's messages as the prompt ids the engine decodes, checked
against the model's context window.

The chat template is rendered with the server's tool instructions (what
``ConveyorGenerator`` adds for its tools) and tokenized here, once, on the event loop;
the request then runs ``generate(input_ids=...)``. So the tokenizer shared by all
requests is only ever read while answers decode (``generate`` with chat messages would
set its padding side and pad token around each call, which is not safe while other
threads use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from conveyor_hf.generator import ConveyorGenerator
from conveyor_hf.server.errors import APIError
from conveyor_hf.server.serving_engine import ServingEngine
from conveyor_hf.tools.base import Tool
from conveyor_hf.tools.caller import CallerTool


@dataclass
class Prompt:
    """Prompt ids (one row) and the completion budget the request gets."""

    input_ids: torch.Tensor
    max_tokens: int

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])


class PromptBuilder:
    """Renders and tokenizes prompts for one server (its tools, tokenizer and context)."""

    def __init__(self, serving: ServingEngine, tools: Sequence[Tool], *, mode: str, default_max_tokens: int) -> None:
        # Used only to render: it never decodes, so it shares the engine and the tool templates.
        self._tools, self._mode, self._engine = list(tools), mode, serving.engine
        self._renderer = ConveyorGenerator(serving.engine, serving.tokenizer, tools=self._tools, mode=mode)
        self._tokenizer = serving.tokenizer
        self.context_length = serving.context_length
        self.default_max_tokens = default_max_tokens

    def build(self, messages: list[dict], max_tokens: int | None, client_tools: Sequence[CallerTool] = ()) -> Prompt:
        """The prompt of ``messages`` offering the server's tools and ``client_tools``;
        :class:`APIError` (400) if it does not fit the context."""
        renderer = self._renderer
        if client_tools:
            renderer = ConveyorGenerator(self._engine, self._tokenizer, tools=[*self._tools, *client_tools],
                                         mode=self._mode)
        try:
            [text], _ = renderer.render_prompts(messages)
        except Exception as exc:  # a template that refuses these messages (e.g. roles out of order)
            raise APIError(400, f"the chat template cannot render these messages: {exc}", param="messages") from None
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        count, context = len(ids), self.context_length
        budget = max_tokens if max_tokens is not None else self.default_max_tokens
        if context is not None:
            if count >= context:
                raise APIError(400, f"the prompt is {count} tokens (tool instructions included) but this model's "
                                    f"context is {context} tokens; shorten the messages",
                               param="messages", code="context_length_exceeded")
            if max_tokens is not None and count + max_tokens > context:
                raise APIError(400, f"the prompt ({count} tokens) plus max_tokens={max_tokens} exceeds this "
                                    f"model's context of {context} tokens; ask for at most {context - count}",
                               param="max_tokens", code="context_length_exceeded")
            budget = min(budget, context - count)
        return Prompt(torch.tensor([ids], dtype=torch.long), budget)
