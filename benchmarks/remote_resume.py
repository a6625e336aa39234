"""What resuming after a tool result costs on a remote engine: does the server reuse the prefix?

After a tool call the remote engine sends a new request whose prompt is the old prompt +
the answer so far + the result. A server that caches prefixes (vLLM automatic prefix
caching, SGLang RadixAttention) prefills only the appended tokens; one that does not
prefills everything again. This measures the time to the first streamed token (TTFT) of

- ``cold``: a prompt of N tokens the server has not seen (a fresh random prefix),
- ``resume``: the same prompt + ~75 appended tokens (a tool result), right after ``cold``,

side by side, several alternating repeats, medians with min–max. ``resume / cold`` near 1
means the whole prompt is prefilled again; far below 1 means the prefix was reused.

    python -m benchmarks.remote_resume --engine http://127.0.0.1:8000/v1 --lengths 256,1024
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

import httpx

from benchmarks.standalone import add_json_option, script_parser, spread, write_json

RESULT = ("\n```output\n" + "\n".join(f"row {i}: value {i * 37 % 101} ok" for i in range(8)) + "\n```\n")


def ttft(client: httpx.Client, url: str, model: str, prompt: str) -> float:
    """Seconds from sending the request to the first streamed text (one token asked)."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "stream": True}
    begin = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                chunk = json.loads(line[5:])
                if any(c.get("text") for c in chunk.get("choices") or ()):
                    return time.perf_counter() - begin
    return time.perf_counter() - begin


def words(n: int, rng: random.Random) -> str:
    """About ``n`` tokens of fresh text (so no earlier request shares its prefix)."""
    vocab = ["alpha", "river", "stone", "cloud", "seven", "garden", "copper", "window", "orange", "silent"]
    return " ".join(rng.choice(vocab) + str(rng.randrange(1000)) for _ in range(n // 3))


def measure(base_url: str, model: str, lengths: list[int], repeats: int) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/completions"
    rng = random.Random(0)
    out: dict[str, Any] = {"engine": base_url, "model": model, "repeats": repeats, "lengths": {}}
    with httpx.Client(timeout=300) as client:
        ttft(client, url, model, "warm up")  # the first request may load the model
        for n in lengths:
            cold, resume = [], []
            for _ in range(repeats):
                prompt = words(n, rng)
                cold.append(ttft(client, url, model, prompt))
                resume.append(ttft(client, url, model, prompt + RESULT))
            ratios = spread([r / c for r, c in zip(resume, cold)])
            out["lengths"][n] = {
                "cold_s": statistics.median(cold), "resume_s": statistics.median(resume),
                "ratio": ratios["median"], "ratio_min": ratios["min"], "ratio_max": ratios["max"],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--engine", required=True, metavar="URL", help="API root, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=None, help="served model name (default: the only one listed)")
    parser.add_argument("--lengths", default="256,1024", help="prompt lengths in tokens (approximate)")
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        from conveyor_hf.engines.remote import RemoteEngine

        served = RemoteEngine.served_models(args.engine)
        if len(served) != 1:
            parser.error(f"{args.engine} serves {served}; name one with --model")
        model = served[0]
    result = measure(args.engine, model, [int(x) for x in args.lengths.split(",")], args.repeats)
    print(f"resume cost at {args.engine} (TTFT, medians of {args.repeats}):")
    for n, row in result["lengths"].items():
        print(f"  {n:5d} tokens: cold {row['cold_s']:.3f}s  resume {row['resume_s']:.3f}s  "
              f"resume/cold {row['ratio']:.2f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})")
    write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
