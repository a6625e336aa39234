"""What the tool loop costs the model: per-token overhead and resuming on the KV cache.

- ``overhead``: answers that call no tool. :class:`ConveyorGenerator` (tools attached,
  its hook running every step) against plain ``model.generate`` on the same ids, greedy,
  alternating, medians. Reported as a ratio (conveyor / plain); both must give the same
  tokens. Its ``noise`` is plain against plain: each repeat's plain answers against the
  next repeat's, the change the machine makes by itself.
- ``kv_reuse``: after a tool result, the loop prefills only the appended tokens on the
  cached context instead of the whole conversation. Measured directly: a forward of the
  appended tokens on a cache of L tokens against a forward of all L + k tokens without a
  cache (what re-prompting from scratch costs), at several context lengths, medians.
  Both forwards compute logits for the last position only, as ``generate``'s prefill
  does. The context is real text (a chat with the tools' system prompt and HumanEval
  code); the appended text is a tool-result block holding a Wikipedia summary.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, ClassVar

from benchmarks.workloads import (
    QUICK_REPEATS_SHORT, BenchContext, Workload, consecutive_changes, noise_figure, user, value_range,
)
from benchmarks.workloads import data


class OverheadWorkload(Workload):
    name = "overhead"
    title = "per-token overhead: ConveyorGenerator vs model.generate (no tool call)"
    note = "Live greedy answers that call no tool; same ids and settings for both; ratio of median latencies."
    decoding = "live"
    repeats = (5, QUICK_REPEATS_SHORT)  # its quick answer decodes for 3 s; its noise needs the pairs
    needs_local_model = True  # times plain model.generate against the generator
    PROMPTS: ClassVar[tuple[str, ...]] = (
        "Write a short poem about the sea.",
        "Explain in three sentences why the sky is blue.",
    )
    #: Tokens per answer (full, quick); greedy answers may end earlier at EOS.
    max_new_tokens: ClassVar[tuple[int, int]] = (96, 64)

    def prompts(self, ctx: BenchContext) -> tuple[str, ...]:
        return self.PROMPTS[:1] if ctx.quick else self.PROMPTS

    def planned_runs(self, ctx: BenchContext) -> int:
        return 2 * len(self.prompts(ctx)) * self.repeat_count(ctx)

    def measure(self, ctx: BenchContext) -> dict[str, Any]:
        from conveyor_hf.tools import PythonTool

        started = time.perf_counter()
        tool = PythonTool()
        tool.warm_up()
        model, tok = ctx.model, ctx.tokenizer
        gen = ctx.generator([tool], mode="partial")
        limit = self.max_new_tokens[1] if ctx.quick else self.max_new_tokens[0]
        settings = dict(max_new_tokens=limit, do_sample=False, pad_token_id=tok.eos_token_id)
        repeats = self.repeat_count(ctx)
        per_prompt: dict[str, Any] = {}
        problems: list[str] = []
        try:
            encoded = {p: gen.encode([user(p)]) for p in self.prompts(ctx)}
            for ids, mask in encoded.values():  # warm both paths, untimed
                model.generate(input_ids=ids, attention_mask=mask, **{**settings, "max_new_tokens": 4})
                gen.generate(ids, attention_mask=mask, **{**settings, "max_new_tokens": 4})
            times: dict[str, dict[str, list[float]]] = {p: {"plain": [], "conveyor": []} for p in encoded}
            tokens: dict[str, int] = {}
            for repeat in range(repeats):
                for index, (prompt, (ids, mask)) in enumerate(encoded.items()):
                    order = ("plain", "conveyor") if (repeat + index) % 2 == 0 else ("conveyor", "plain")
                    outputs = {}
                    for side in order:
                        gc.collect()
                        begin = time.perf_counter()
                        if side == "plain":
                            outputs[side] = model.generate(input_ids=ids, attention_mask=mask, **settings)
                        else:
                            out = gen.generate(ids, attention_mask=mask, **settings)
                            outputs[side] = out.sequences
                            if out.tool_calls:
                                problems.append(f"{prompt!r}: the answer called a tool; pick another prompt")
                        times[prompt][side].append(time.perf_counter() - begin)
                        ctx.progress(f"overhead:{side}")
                    plain, conveyor = outputs["plain"], outputs["conveyor"]
                    if plain.shape != conveyor.shape or not bool((plain == conveyor).all()):
                        problems.append(f"{prompt!r}: ConveyorGenerator's tokens differ from model.generate's")
                    tokens[prompt] = int(plain.shape[1] - ids.shape[1])
            hook_ms = hook_cost_ms(gen, *next(iter(encoded.values())), settings)
            for prompt, sides in times.items():
                plain, conveyor = statistics.median(sides["plain"]), statistics.median(sides["conveyor"])
                per_prompt[prompt] = {
                    "plain_s": plain, "conveyor_s": conveyor, "ratio": conveyor / plain,
                    "new_tokens": tokens[prompt],
                    "overhead_ms_per_token": 1000 * (conveyor - plain) / max(1, tokens[prompt]),
                    "plain_runs_s": sides["plain"], "conveyor_runs_s": sides["conveyor"],
                    "prompt_tokens": int(encoded[prompt][0].shape[1]),
                }
        finally:
            tool.close()
        plain_total = sum(p["plain_s"] for p in per_prompt.values())
        conveyor_total = sum(p["conveyor_s"] for p in per_prompt.values())
        new_tokens = sum(p["new_tokens"] for p in per_prompt.values())
        paired = [c / p for sides in times.values() for p, c in zip(sides["plain"], sides["conveyor"])]
        # Per repeat: both sides summed over the prompts (one repeat answers each prompt once per side).
        plain_r = [sum(sides["plain"][r] for sides in times.values()) for r in range(repeats)]
        conveyor_r = [sum(sides["conveyor"][r] for sides in times.values()) for r in range(repeats)]
        step_ms = 1000 * plain_total / max(1, new_tokens)
        # The machine alone: each repeat's plain answers against the next repeat's (same ids, same settings).
        drift = consecutive_changes(plain_r)
        return {
            "ratio": conveyor_total / plain_total if plain_total else None,
            "noise": noise_figure(drift, f"{len(drift)} consecutive pairs of {repeats} plain repeats"),
            "paired_ratio_median": statistics.median(paired) if paired else None,
            "hook_ms_per_step": hook_ms,
            "hook_share_of_step": hook_ms / step_ms if hook_ms is not None and step_ms > 0 else None,
            "spread": {
                "ratio": value_range(c / p for p, c in zip(plain_r, conveyor_r)),
                "paired_ratio": value_range(paired),
                "plain_latency": value_range(plain_r),
                "conveyor_latency": value_range(conveyor_r),
                "overhead_ms_per_token": value_range(1000 * (c - p) / max(1, new_tokens)
                                                     for p, c in zip(plain_r, conveyor_r)),
                "over": f"{repeats} repeats, each answering all {len(times)} prompt(s) once per side",
            },
            "plain": {"latency": plain_total},
            "conveyor": {"latency": conveyor_total},
            "overhead_ms_per_token": 1000 * (conveyor_total - plain_total) / max(1, new_tokens),
            "new_tokens": new_tokens,
            "repeats": repeats,
            "decoding": self.decoding,
            "tools_attached": ["python"],
            "identical_tokens": not any("differ" in p for p in problems),
            "problems": problems,
            "prompts": per_prompt,
            "note": self.note,
            "seconds": time.perf_counter() - started,
        }


def hook_cost_ms(gen, ids, mask, settings: dict[str, Any]) -> float | None:
    """Mean milliseconds per decoding step spent in the generator's per-step hook, from one
    extra (untimed) answer with the hook's ``__call__`` wrapped in a timer; a diagnostic
    for the overhead ratio, not part of it."""
    from conveyor_hf import hooks

    cls = getattr(hooks, "ConveyorHook", None)
    if cls is None or "__call__" not in vars(cls):
        return None
    original = vars(cls)["__call__"]
    spent: list[float] = []

    def timed(self, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - begin)

    cls.__call__ = timed
    try:
        gen.generate(ids, attention_mask=mask, **settings)
    finally:
        cls.__call__ = original
    return 1000 * sum(spent) / len(spent) if spent else None


#: The appended text: a tool-result block, as the loop re-prompts it.
RESULT_TEMPLATE = "\n```output\n{body}\n```\n"


class KVReuseWorkload(Workload):
    name = "kv_reuse"
    title = "resuming after a tool result: cached prefill vs full re-prefill"
    note = ("Forward of the appended tool-result tokens on the cached context vs a forward of the whole "
            "context without cache; ratio = cached / full (lower is better).")
    decoding = "n/a"
    repeats = (3, 3)
    needs_local_model = True  # times forward passes of the model itself
    #: Context lengths (full, quick): a full forward of 2048 tokens takes ~8 s here, so
    #: ``--quick`` stops at 1024.
    LENGTHS: ClassVar[tuple[tuple[int, ...], tuple[int, ...]]] = ((256, 512, 1024, 2048), (256, 1024))

    def lengths(self, ctx: BenchContext) -> tuple[int, ...]:
        return self.LENGTHS[1] if ctx.quick else self.LENGTHS[0]

    def planned_runs(self, ctx: BenchContext) -> int:
        return len(self.lengths(ctx)) * self.repeat_count(ctx)

    def context_ids(self, ctx: BenchContext, length: int) -> list[int]:
        """At least ``length`` tokens of a real conversation: the tools' system prompt, a
        question, and an assistant answer made of HumanEval programs."""
        from conveyor_hf import ConveyorGenerator
        from conveyor_hf.tools.scripted import ScriptedTool

        gen = ConveyorGenerator(ctx.model, ctx.tokenizer, tools=[ScriptedTool("search")])
        ids = gen.encode([user("Write and test these functions.")])[0][0].tolist()
        problems = data.humaneval()
        for task_id in sorted(problems, key=lambda k: int(k.split("/")[1])):
            if len(ids) >= length:
                break
            code = data.humaneval_program(problems[task_id])
            ids += ctx.tokenizer(f"```python\n{code}```\n", add_special_tokens=False)["input_ids"]
        return ids[:length]

    def suffix_ids(self, ctx: BenchContext) -> list[int]:
        try:
            extract = str(data.corpus().get("Mariana Trench", {}).get("extract", ""))
        except data.DataUnavailable:
            extract = ""
        body = " ".join(extract.split()[:40]) or "Mariana Trench: the deepest oceanic trench on Earth, 10,984 m."
        return ctx.tokenizer(RESULT_TEMPLATE.format(body=body), add_special_tokens=False)["input_ids"]

    def measure(self, ctx: BenchContext) -> dict[str, Any]:
        import torch
        from transformers import DynamicCache

        from conveyor_hf.engines.generate import cache_keyword

        started = time.perf_counter()
        model = ctx.model
        device = model.device
        suffix = torch.tensor([self.suffix_ids(ctx)], device=device)
        repeats = self.repeat_count(ctx)
        by_length: dict[str, Any] = {}
        with torch.inference_mode():
            for length in self.lengths(ctx):
                context = torch.tensor([self.context_ids(ctx, length)], device=device)
                whole = torch.cat([context, suffix], dim=1)
                cache = DynamicCache(config=model.config)
                model(input_ids=context, **{cache_keyword(): cache}, use_cache=True, logits_to_keep=1)
                model(input_ids=whole, use_cache=True, logits_to_keep=1)  # warm the long path, untimed
                cached_s, full_s = [], []
                for repeat in range(repeats):
                    for side in (("cached", "full") if repeat % 2 == 0 else ("full", "cached")):
                        if side == "cached":
                            begin = time.perf_counter()
                            model(input_ids=suffix, **{cache_keyword(): cache}, use_cache=True, logits_to_keep=1)
                            cached_s.append(time.perf_counter() - begin)
                            cache.crop(length - cache.get_seq_length())  # drop the appended tokens again
                        else:
                            begin = time.perf_counter()
                            model(input_ids=whole, use_cache=True, logits_to_keep=1)
                            full_s.append(time.perf_counter() - begin)
                    ctx.progress(f"kv_reuse:{length}")
                cached, full = statistics.median(cached_s), statistics.median(full_s)
                by_length[str(length)] = {
                    "context_tokens": length, "appended_tokens": int(suffix.shape[1]),
                    "cached_ms": 1000 * cached, "full_ms": 1000 * full, "ratio": cached / full,
                    "cached_ms_spread": value_range(1000 * t for t in cached_s),
                    "full_ms_spread": value_range(1000 * t for t in full_s),
                    "ratio_spread": value_range(c / f for c, f in zip(cached_s, full_s)),
                }
                del cache
        longest = by_length[str(max(self.lengths(ctx)))]
        return {
            "ratio": longest["ratio"],
            "ratio_at_context_tokens": longest["context_tokens"],
            "by_length": by_length,
            "repeats": repeats,
            "generator_prefill_tokens": self.generator_prefill(ctx),
            "note": self.note,
            "seconds": time.perf_counter() - started,
        }

    def generator_prefill(self, ctx: BenchContext) -> list[int]:
        """Tokens the real loop prefilled per round for a one-call answer: the prompt, then
        only the appended result (evidence that generate resumes on the cache)."""
        from conveyor_hf import ConveyorGenerator
        from conveyor_hf.tools.scripted import ScriptedTool

        tool = ScriptedTool("search", respond=lambda q: f"{q}: found")
        gen = ConveyorGenerator(ctx.model, ctx.tokenizer, tools=[tool])
        out = gen.generate(user("Look up the Mariana Trench."), replay=["<search>\nMariana Trench\n</search>\nDone."],
                           max_new_tokens=40)
        return list(out.timeline.summary()["prefill_tokens"])
