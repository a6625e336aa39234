"""The per-step hook that runs inside ``model.generate`` (the ``generate`` engine).

``generate`` calls every ``StoppingCriteria`` once per decoding step with the whole
``input_ids``. :class:`ConveyorHook` is one: it hands the newest token of each batch row
to that row's :class:`~conveyor_hf.conversation.Conversation` (which detokenizes it,
feeds the parsers and starts tool units, never blocking on tool work) and returns True
for a row once its conversation says stop, so ``generate`` stops that row alone.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import StoppingCriteria

from parsers.calls import CallEvent

from conveyor_hf.conversation import Conversation, ConversationRules, StopReason
from conveyor_hf.detokenizer import IncrementalDetokenizer

#: The per-row state of the hook is a conversation (kept under its first name).
RowState = Conversation

__all__ = ["ConveyorHook", "IncrementalDetokenizer", "RowState", "StopReason"]


class ConveyorHook(StoppingCriteria):
    """A ``StoppingCriteria`` that drives tool partial execution, one conversation per row.

    Give it the request's :class:`ConversationRules`, or the parts of one:
    ``open_call(conversation, event)`` returns the handler of a call that opened;
    ``on_text(row, text)`` sees every text delta (for streaming). Rows are the
    conversations in ``self.active``, in batch order; rows already stopped return True,
    as ``generate`` expects.
    """

    def __init__(
        self,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        open_call: Callable[[Conversation, CallEvent], object] | None = None,
        on_text: Callable[[int, str], None] | None = None,
        *,
        abort_on_error: bool = False,
        rules: ConversationRules | None = None,
    ) -> None:
        if rules is None:
            if open_call is None:
                raise TypeError("ConveyorHook needs open_call (or rules=ConversationRules(...))")
            rules = ConversationRules(open_call, frozenset(eos_token_ids), on_text, abort_on_error)
        self.rules = rules
        self.active: list[Conversation] = []

    def start_round(self, rows: list[Conversation]) -> None:
        """Follow ``rows`` (in batch order) through the next ``generate`` call."""
        self.active = rows
        for state in rows:
            if state.rules is None:
                state.rules = self.rules
            state.begin_round()

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        length = input_ids.shape[1]
        newest = input_ids[:, -1].tolist()
        flags = []
        for state, token in zip(self.active, newest):
            if state.stop is None:
                state.feed_token(int(token), length)
            flags.append(state.stop is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)
