"""Who decodes: one small interface (:class:`Engine`) and its implementations.

- :class:`GenerateEngine`: ``model.generate`` in-process with the per-step hook (default).
- :class:`ContinuousEngine`: transformers continuous batching in-process; concurrent
  requests decode batched and a conversation waiting for a tool leaves the batch.
- :class:`RemoteEngine`: any OpenAI-compatible streaming ``/v1/completions`` server
  (vLLM, SGLang, TGI, ``transformers serve``), the scale-out path.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ContinuousEngine", "Engine", "GenerateEngine", "RemoteEngine", "RemoteEngineError"]

_WHERE = {
    "ContinuousEngine": "conveyor_hf.engines.continuous",
    "Engine": "conveyor_hf.engines.base",
    "GenerateEngine": "conveyor_hf.engines.generate",
    "RemoteEngine": "conveyor_hf.engines.remote",
    "RemoteEngineError": "conveyor_hf.engines.remote",
}


def __getattr__(name: str) -> Any:
    # Lazy, so importing one engine does not import the others' dependencies.
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'conveyor_hf.engines' has no attribute {name!r}")
