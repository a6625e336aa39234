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

    def __init__(self, scripts: Sequence[Sequence[int]], eos_token_id: int, tokenizer=None) -> None:
        self.scripts = [list(s) for s in scripts]
        self.eos_token_id = int(eos_token_id)
        self.tokenizer = tokenizer
        self.offsets = [0] * len(self.scripts)  # script tokens skipped per row
        self._hook = None

    def bind(self, hook) -> None:
        """Attach to the ``ConveyorHook`` whose ``active`` rows this processor follows."""
        self._hook = hook

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._hook is None:
            raise RuntimeError(
                "ReplayLogitsProcessor must be bound to the generator's hook; pass replay= to generate()"
            )
        forced = torch.full_like(scores, float("-inf"))
        for pos, state in enumerate(self._hook.active):
            script = self.scripts[state.row]
            at = state.generated + self.offsets[state.row]
            token = script[at] if at < len(script) else self.eos_token_id
            forced[pos, token] = 0.0
        return forced

    def skip_past(self, row: int, generated: int, closer: str) -> None:
        """After an early abort: continue ``row``'s script after the next ``closer``.

        The recorded answer went on writing the aborted call; the replay resumes where
        the recording's call ended, as a model that saw the error would.
        """
        if self.tokenizer is None:
            raise RuntimeError("skip_past needs the tokenizer; construct with tokenizer=")
        script = self.scripts[row]
        start = generated + self.offsets[row]
        for end in range(start + 1, len(script) + 1):
            if closer in self.tokenizer.decode(script[start:end], skip_special_tokens=True):
                self.offsets[row] += end - start
                return
        self.offsets[row] = len(script)  # no closer left: end the answer
