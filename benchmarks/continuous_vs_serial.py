"""N concurrent tool-using conversations: continuous batching vs one request at a time.

The same N conversations (the default model writes a ```python block for each, greedy;
each conversation has its own Python kernel) arrive together and are answered

- ``serial``: one after another through ``GenerateEngine`` (``model.generate``, one
  request at a time, as a server without batching would);
- ``continuous``: all at once, one thread each, through one shared ``ContinuousEngine``
  (transformers continuous batching; a conversation waiting for its tool leaves the
  batch and comes back through the prefix cache);
- ``continuous_noshare`` (optional): the same without prefix sharing, so each resume
  prefills its whole prompt again.

Variants alternate within each repeat (the order flips every repeat). Reported per variant:
throughput (new tokens / wall time of the phase), latency from arrival (all N arrive at
t=0, so a serial conversation's latency includes waiting for the ones before it) as
median with min-max over all conversations and repeats, and whether the greedy texts
equal the serial ones. The 1-minute load average is recorded around each phase: the CPU
is shared, so compare ratios within one run.

    python -m benchmarks.continuous_vs_serial --n 4 --repeats 3 --json /tmp/cb.json
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks.standalone import add_json_option, script_parser, spread, write_json

TASKS = [
    "the sum of the squares of the integers from 1 to 100",
    "the product of the integers from 1 to 12",
    "the number of primes below 1000",
    "the 30th Fibonacci number",
    "the sum of the cubes of the integers from 1 to 50",
    "the greatest common divisor of 1071 and 462",
    "2 to the power of 64",
    "the sum of the digits of 2 to the power of 100",
]
VARIANTS = ("serial", "continuous", "continuous_noshare")


def ask(task: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Use Python to compute {task}, then tell me the result."}]


class Bench:
    """The model, the tools of each conversation and the engines, built once."""

    def __init__(self, n: int, max_new_tokens: int, variants: list[str]) -> None:
        from conveyor_hf.engines import ContinuousEngine, GenerateEngine
        from conveyor_hf.models import load_default_model
        from conveyor_hf.tools import PythonTool

        self.model, self.tokenizer = load_default_model(device="cpu", verbose=False)
        self.max_new_tokens = max_new_tokens
        self.asks = [ask(TASKS[i % len(TASKS)]) for i in range(n)]
        self.tools = [PythonTool() for _ in range(n)]
        for tool in self.tools:
            tool.warm_up()
        self.engines: dict[str, Any] = {}
        if "serial" in variants:
            self.engines["serial"] = GenerateEngine(self.model)
        if "continuous" in variants:
            self.engines["continuous"] = ContinuousEngine(self.model)
        if "continuous_noshare" in variants:
            self.engines["continuous_noshare"] = ContinuousEngine(self.model, prefix_sharing=False)

    def answer(self, variant: str, i: int) -> Any:
        from conveyor_hf.generator import ConveyorGenerator

        gen = ConveyorGenerator(self.engines[variant], self.tokenizer, tools=[self.tools[i]])
        return gen.generate(self.asks[i], max_new_tokens=self.max_new_tokens, do_sample=False)

    def phase(self, variant: str) -> dict[str, Any]:
        """All conversations arrive at once; answered by ``variant``."""
        n = len(self.asks)
        latencies: list[float] = [0.0] * n
        outputs: list[Any] = [None] * n
        for tool in self.tools:
            tool.reset()  # a fresh kernel for every conversation, untimed
        load = os.getloadavg()[0]
        begin = time.perf_counter()
        if variant == "serial":
            for i in range(n):
                outputs[i] = self.answer(variant, i)
                latencies[i] = time.perf_counter() - begin
        else:
            def one(i: int) -> None:
                outputs[i] = self.answer(variant, i)
                latencies[i] = time.perf_counter() - begin

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        wall = time.perf_counter() - begin
        if any(out is None for out in outputs):
            raise RuntimeError(f"{variant}: a conversation failed (see the traceback above)")
        tokens = sum(out.timeline.summary()["new_tokens"] for out in outputs)
        return {
            "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "latencies_s": latencies,
            "texts": [out.text for out in outputs], "tool_calls": sum(len(out.tool_calls) for out in outputs),
            "stop_reasons": [out.stop_reasons[0] for out in outputs], "load_before": load,
            "load_after": os.getloadavg()[0],
        }

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        for tool in self.tools:
            tool.close()


def run(n: int, repeats: int, max_new_tokens: int, variants: list[str], time_limit: float) -> dict[str, Any]:
    bench = Bench(n, max_new_tokens, variants)
    started = time.perf_counter()
    phases: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for variant in variants:  # untimed warm-up of each engine (first-call costs)
            bench.answer(variant, 0)
        for r in range(repeats):
            if r and time.perf_counter() - started > time_limit:
                break
            for variant in (variants if r % 2 == 0 else list(reversed(variants))):
                phase = bench.phase(variant)
                phases[variant].append(phase)
                print(f"repeat {r} {variant:19s} wall {phase['wall_s']:6.1f}s  {phase['tokens_per_s']:5.1f} tok/s  "
                      f"load {phase['load_before']:.1f}", flush=True)
    finally:
        bench.close()
    reference = phases[variants[0]][0]["texts"]
    summary: dict[str, Any] = {}
    for variant, runs in phases.items():
        summary[variant] = {
            "tokens_per_s": spread([p["tokens_per_s"] for p in runs]),
            "latency_s": spread([lat for p in runs for lat in p["latencies_s"]]),
            "wall_s": spread([p["wall_s"] for p in runs]),
            "tokens": spread([p["tokens"] for p in runs]),
            "tool_calls": spread([p["tool_calls"] for p in runs]),
            "texts_equal_first": sum(p["texts"] == reference for p in runs),
            "runs": len(runs),
            "load": spread([p["load_before"] for p in runs] + [p["load_after"] for p in runs]),
        }
    return {"n": n, "repeats": len(phases[variants[0]]), "max_new_tokens": max_new_tokens,
            "cpus": os.cpu_count(), "variants": variants, "summary": summary,
            "texts": reference, "phases": phases}


def table(doc: dict[str, Any]) -> str:
    first = doc["variants"][0]
    lines = [f"{doc['n']} conversations arriving together, {doc['repeats']} alternating repeats, "
             f"max_new_tokens={doc['max_new_tokens']}, {doc['cpus']} CPUs",
             "", f"| variant | tokens/s | latency median (min-max) s | wall s | vs {first} (tokens/s) "
             f"| texts = {first} |",
             "|---|---|---|---|---|---|"]
    base = doc["summary"][first]["tokens_per_s"]["median"]
    for variant in doc["variants"]:
        s = doc["summary"][variant]
        tps, lat, wall = s["tokens_per_s"], s["latency_s"], s["wall_s"]
        lines.append(f"| {variant} | {tps['median']:.1f} ({tps['min']:.1f}-{tps['max']:.1f}) | "
                     f"{lat['median']:.1f} ({lat['min']:.1f}-{lat['max']:.1f}) | {wall['median']:.1f} | "
                     f"{tps['median'] / base:.2f}x | {s['texts_equal_first']}/{s['runs']} |")
    loads = [doc["summary"][v]["load"] for v in doc["variants"]]
    lines.append("")
    lines.append(f"load average (1 min) during the run: {min(x['min'] for x in loads):.1f}-"
                 f"{max(x['max'] for x in loads):.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--n", type=int, default=4, help="conversations arriving together (1-16)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (1-5)")
    parser.add_argument("--max-new-tokens", type=int, default=90)
    parser.add_argument("--variants", default="serial,continuous",
                        help=f"comma-separated, first is the baseline: {', '.join(VARIANTS)}")
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="seconds after which no new repeat starts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants {args.variants!r}: use some of {', '.join(VARIANTS)}")
    if not 1 <= args.n <= 16 or not 1 <= args.repeats <= 5:
        parser.error(f"--n {args.n} must be 1-16 and --repeats {args.repeats} 1-5")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    doc = run(args.n, args.repeats, args.max_new_tokens, variants, args.time_limit)
    print(table(doc))
    write_json(args.json, doc, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
