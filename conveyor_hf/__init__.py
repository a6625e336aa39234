"""conveyor_hf: tool partial execution for Hugging Face transformers.

Tools start on each complete part of a tool call while the model is still decoding the
rest of it, so tool work overlaps decoding (the Conveyor idea, arXiv 2406.00059)::

    from conveyor_hf import ConveyorGenerator, load_default_model
    from conveyor_hf.tools import PythonTool

    model, tokenizer = load_default_model()
    with ConveyorGenerator(model, tokenizer, tools=[PythonTool()]) as gen:
        out = gen.generate([{"role": "user", "content": "What is 2**100? Use Python."}])
    print(out.text, out.timeline.summary())
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ConveyorGenerator": "conveyor_hf.generator",
    "ConveyorOutput": "conveyor_hf.generator",
    "load_default_model": "conveyor_hf.models",
    "load_model": "conveyor_hf.models",
    "Timeline": "conveyor_hf.timeline",
}

__all__ = ["ConveyorGenerator", "ConveyorOutput", "Timeline", "load_default_model", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import conveyor_hf.tools` does not pay for importing torch/transformers.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conveyor_hf' has no attribute {name!r}")
