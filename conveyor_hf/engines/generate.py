"""``GenerateEngine``: decoding with ``model.generate`` and the per-step hook (the default).

Each round is one ``model.generate`` call over the conversations still going, with
:class:`~conveyor_hf.hooks.ConveyorHook` among the stopping criteria: a row stops the
moment its conversation says so, the others go on. When every row has stopped, the tool
loop settles each; the rows that resume continue together in the next round **on the
same KV cache**, so only the appended tokens are prefilled.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers import DynamicCache, GenerationConfig, StoppingCriteriaList

from conveyor_hf.engines.base import Engine
from conveyor_hf.hooks import ConveyorHook

if TYPE_CHECKING:
    from conveyor_hf.conversation import Conversation
    from conveyor_hf.loop import ToolLoop
    from conveyor_hf.timeline import RoundRecord

#: ``generate`` keywords that ask for per-step tensors the tool loop does not collect.
_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


class GenerateEngine(Engine):
    """Decodes with ``model.generate`` in-process (any transformers causal LM, CPU or GPU).

    ``ConveyorGenerator(model, tokenizer)`` builds one; pass it explicitly to share it.
    """

    name = "generate"
    supports_replay = True

    def __init__(self, model: Any) -> None:
        if not hasattr(model, "generate"):
            raise TypeError(f"GenerateEngine needs a model with .generate(), got {type(model).__name__}")
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    def default_generation_config(self) -> GenerationConfig:
        return self.model.generation_config

    def check_options(self, config: GenerationConfig, extra: dict[str, Any]) -> None:
        if (config.num_beams or 1) > 1:
            raise ValueError(
                f"num_beams={config.num_beams} is not supported with tool calls (a beam cannot run tools "
                "of its own); use num_beams=1, with do_sample=True and num_return_sequences for several answers"
            )
        if extra.get("assistant_model") is not None:
            raise ValueError("assistant_model (assisted decoding) is not supported with tool calls; remove it")
        asked = [key for key in _UNSUPPORTED_OUTPUTS if getattr(config, key, False) or extra.get(key)]
        if asked:
            raise ValueError(
                f"{', '.join(f'{k}=True' for k in asked)} is not supported: the tool loop decodes in several "
                "generate() rounds and does not collect per-step tensors; remove it (the output's "
                "sequences, texts and timeline are always returned)"
            )
        extra.pop("return_dict_in_generate", None)
        config.return_dict_in_generate = False  # ConveyorOutput already is the dict form

    def describe(self) -> str:
        return f"generate ({type(self.model).__name__} on {self.device})"

    def run(self, loop: "ToolLoop") -> None:
        """Rounds of ``model.generate`` until no conversation resumes."""
        hook = ConveyorHook(rules=loop.rules)
        if loop.replayer is not None:
            loop.replayer.bind(hook)
        cache = loop.cache if loop.cache is not None else new_cache(self.model)
        ids = loop.input_ids.to(self.device)
        mask = loop.attention_mask.to(self.device)
        user_criteria = list(loop.extra.pop("stopping_criteria", None) or [])
        active = list(loop.conversations)
        while True:
            rnd = loop.begin_round(active[0].round_index)
            seqs = self._decode(loop, hook, active, ids, mask, cache, user_criteria, rnd)
            start_len = ids.shape[1]
            resume = []
            for pos, conv in enumerate(active):
                if conv.stop is None:  # max_new_tokens, or a caller's stopping criterion
                    conv.stop, conv.stop_length = "length", seqs.shape[1]
                rnd.new_tokens += conv.stop_length - start_len
                suffix = loop.settle(conv, seqs[pos, start_len:conv.stop_length].tolist(), eos_token_last=True)
                if suffix is not None:
                    resume.append((pos, suffix, conv.stop_length - start_len - int(conv.dropped_eos)))
            if not resume:
                loop.end_round(rnd)
                return
            ids, mask = _next_inputs(seqs, mask, start_len, resume, loop.config.pad_token_id)
            positions = [pos for pos, _, _ in resume]
            if len(positions) < len(active):
                cache.batch_select_indices(torch.tensor(positions, device=seqs.device))
            active = [active[pos] for pos in positions]
            loop.end_round(rnd)

    def _decode(self, loop: "ToolLoop", hook: ConveyorHook, active: "list[Conversation]", ids: torch.Tensor,
                mask: torch.Tensor, cache: Any, user_criteria: list, rnd: "RoundRecord") -> torch.Tensor:
        """One ``model.generate`` call over the ``active`` rows; returns its sequences."""
        hook.start_round(active)
        round_config = copy.deepcopy(loop.config)
        round_config.max_new_tokens = max(c.budget - c.generated for c in active)
        round_config.max_length = None
        counter = _PrefillCounter(self.model)
        try:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=round_config,
                stopping_criteria=StoppingCriteriaList([*user_criteria, hook]),
                **{cache_keyword(): cache},
                **loop.extra,
            )
        finally:
            counter.remove()
        rnd.decode_end = time.perf_counter()
        rnd.prefill_tokens = counter.first
        return out if isinstance(out, torch.Tensor) else out.sequences


@functools.lru_cache(maxsize=1)
def cache_keyword() -> str:
    """The ``generate`` keyword that takes a KV cache: ``cache`` where the installed
    transformers has it (it deprecates ``past_key_values``), else ``past_key_values``."""
    from transformers import GenerationMixin

    try:
        source = inspect.getsource(GenerationMixin._prepare_cache_for_generation)
    except (OSError, TypeError, AttributeError):
        return "past_key_values"
    return "cache" if 'model_kwargs.get("cache")' in source else "past_key_values"


def new_cache(model: Any) -> DynamicCache:
    """An empty ``DynamicCache`` for ``model`` (the tool loop keeps it across rounds)."""
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


class _PrefillCounter:
    """Counts the tokens the model processes in the first forward of a round."""

    def __init__(self, model: Any) -> None:
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
