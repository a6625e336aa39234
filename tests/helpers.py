"""Small helpers shared by the tool tests (importable because pytest puts tests/ on sys.path)."""

import time
from pathlib import Path

#: LLMCompiler's ParallelQA and HotpotQA-comparison questions, vendored with their licence.
LLMCOMPILER_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "llmcompiler"


def wait_until(predicate, limit: float = 10.0) -> bool:
    """Poll ``predicate`` (bounded); observes worker progress, never times it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
