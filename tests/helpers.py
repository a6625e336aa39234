"""Small helpers shared by the tool tests (importable because pytest puts tests/ on sys.path)."""

import time


def wait_until(predicate, limit: float = 10.0) -> bool:
    """Poll ``predicate`` (bounded); observes worker progress, never times it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
