"""How fast the incremental parsers eat a token stream, in characters per second.

Real text, fed the way a decoder produces it: random 1-8 character chunks (fixed seed).
Python: standard-library source files; JSON: the object-valued ``*.json`` files under
site-packages (plus this interpreter's build configuration, which always exists); plans:
task lines built from standard-library docstrings. The budget is 100k chars/s (a
decoding step must never wait for a parser)::

    python benchmarks/parser_speed.py            # prints a table
    python benchmarks/parser_speed.py --min-rate 100000   # exits 1 if any is slower
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import sysconfig
import time
import tokenize
from collections.abc import Callable

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from parsers.json_object import JsonObjectParser  # noqa: E402
from parsers.lines import LineParser  # noqa: E402
from parsers.plan import PlanParser  # noqa: E402
from parsers.python_statements import PythonStatementParser  # noqa: E402

Documents = list[str]


def python_sources(limit_chars: int = 1_500_000, seed: int = 0) -> Documents:
    """A fixed sample of standard-library modules that Python can read."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    random.Random(seed).shuffle(paths)
    docs: Documents = []
    total = 0
    for path in paths:
        try:
            with tokenize.open(path) as handle:
                text = handle.read()
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        docs.append(text)
        total += len(text)
        if total >= limit_chars:
            break
    return docs


def json_documents(limit_chars: int = 1_000_000, seed: int = 0) -> Documents:
    """Object-valued JSON files under site-packages, and the build configuration."""
    config = {k: v for k, v in sysconfig.get_config_vars().items() if isinstance(v, (str, int))}
    docs: Documents = [json.dumps(config, indent=2)]
    total = len(docs[0])
    paths = sorted(pathlib.Path(sysconfig.get_paths()["purelib"]).rglob("*.json"))
    random.Random(seed).shuffle(paths)
    for path in paths:
        if total >= limit_chars:
            break
        try:
            if path.stat().st_size > 200_000:
                continue
            text = path.read_text(encoding="utf-8")
            if not isinstance(json.loads(text), dict):
                continue
        except (OSError, ValueError, RecursionError):
            continue
        docs.append(text)
        total += len(text)
    return docs


def plan_documents(count: int = 400, seed: int = 0) -> Documents:
    """LLMCompiler-style plans whose queries are standard-library docstring lines."""
    rng = random.Random(seed)
    lines = [
        line.strip()
        for text in python_sources(300_000, seed)
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith(("#", '"""', "'''"))
    ]
    docs: Documents = []
    for _ in range(count):
        size = rng.randint(2, 6)
        tasks = [f"{k}. search({rng.choice(lines)!r})" for k in range(1, size + 1)]
        refs = [f"${k}" for k in range(1, size + 1)]
        tasks.append(f"Thought: combine.\n{size + 1}. math('compare', {json.dumps(refs)})")
        tasks.append(f"{size + 2}. join()<END_OF_PLAN>")
        docs.append("\n".join(tasks) + "\n")
    return docs


def measure(make_parser: Callable[[], object], docs: Documents, seed: int = 0) -> dict:
    """Feed every document in random 1-8 character chunks; time only the parser."""
    rng = random.Random(seed)
    chunked = []
    for doc in docs:
        pieces, i = [], 0
        while i < len(doc):
            size = rng.randint(1, 8)
            pieces.append(doc[i : i + size])
            i += size
        chunked.append(pieces)
    units = 0
    start = time.perf_counter()
    for pieces in chunked:
        parser = make_parser()
        for piece in pieces:
            units += len(parser.feed(piece))
        units += len(parser.close())
    seconds = time.perf_counter() - start
    chars = sum(len(doc) for doc in docs)
    return {
        "chars": chars,
        "chunks": sum(len(p) for p in chunked),
        "units": units,
        "seconds": seconds,
        "chars_per_s": chars / seconds if seconds else float("inf"),
    }


def run(seed: int = 0) -> dict[str, dict]:
    """Measure every parser; returns {name: measure(...) result}."""
    python = python_sources(seed=seed)
    plans = plan_documents(seed=seed)
    jsons = json_documents(seed=seed)
    return {
        "PythonStatementParser": measure(PythonStatementParser, python, seed),
        "JsonObjectParser": measure(JsonObjectParser, jsons, seed),
        "JsonObjectParser(expand)": measure(
            lambda: JsonObjectParser(expand=("arguments", "properties", "definitions")),
            jsons,
            seed,
        ),
        "PlanParser": measure(PlanParser, plans, seed),
        "LineParser": measure(LineParser, plans, seed),
    }


def main(argv: list[str] | None = None) -> int:
    """Print chars/s for each parser; with ``--min-rate``, fail when one is slower."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--seed", type=int, default=0)
    options.add_argument(
        "--min-rate", type=float, default=0.0, help="chars/s every parser must reach"
    )
    args = options.parse_args(argv)
    results = run(args.seed)
    version = sys.version.split()[0]
    print(f"# 1-8 char chunks, seed {args.seed}, {os.cpu_count()} CPUs, Python {version}")
    print(f"{'parser':28} {'chars':>10} {'units':>8} {'seconds':>8} {'chars/s':>12}")
    slow = []
    for name, result in results.items():
        print(
            f"{name:28} {result['chars']:>10} {result['units']:>8} "
            f"{result['seconds']:>8.2f} {result['chars_per_s']:>12,.0f}"
        )
        if result["chars_per_s"] < args.min_rate:
            slow.append(name)
    if slow:
        print(f"slower than {args.min_rate:,.0f} chars/s: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
