"""Replay decoding: force a recorded answer token by token through the real model.

Every step still runs the model's forward pass, so decode cost is real, but the text is
fixed: a benchmark can compare lazy and partial tool execution on exactly the same
answer, and a test can make a tiny random model write a tool call. The tool results
appended between rounds are not part of the script; the script is the model's own text.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor


class ReplayLogitsProcessor(LogitsProcessor):
    """Forces ``scripts[row]`` (token ids), then EOS, for each row of the tool loop.

    Rows are identified through the hook's active row states (``bind``): a row's next
    scripted token is ``script[state.generated]``, which stays right across rounds
    because tokens appended by the tool loop are not counted as generated.
    """

    def __init__(self, scripts: Sequence[Sequence[int]], eos_token_id: int) -> None:
        self.scripts = [list(s) for s in scripts]
        self.eos_token_id = int(eos_token_id)
        self._hook = None

    def bind(self, hook) -> None:
        """Attach to the ``ConveyorHook`` whose ``active`` rows this processor follows."""
        self._hook = hook

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._hook is None:
            raise RuntimeError("ReplayLogitsProcessor must be bound to the generator's hook; pass replay= to generate()")
        forced = torch.full_like(scores, float("-inf"))
        for pos, state in enumerate(self._hook.active):
            script = self.scripts[state.row]
            token = script[state.generated] if state.generated < len(script) else self.eos_token_id
            forced[pos, token] = 0.0
        return forced
