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
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ConveyorGenerator": "conveyor_hf.generator",
    "ConveyorOutput": "conveyor_hf.generator",
    "load_default_model": "conveyor_hf.models",
    "load_model": "conveyor_hf.models",
    "Timeline": "conveyor_hf.timeline",
    "ConveyorTextGenerationPipeline": "conveyor_hf.pipeline",
}

__all__ = ["ConveyorGenerator", "ConveyorOutput", "ConveyorTextGenerationPipeline", "Timeline",
           "load_default_model", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import conveyor_hf.tools` does not pay for importing torch/transformers.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conveyor_hf' has no attribute {name!r}")


class _RegisterPipelineOnImport(importlib.abc.MetaPathFinder):
    """Registers the ``"conveyor-text-generation"`` pipeline task right after
    ``transformers.pipelines`` is imported, so that ``import conveyor_hf`` makes the task
    known without importing transformers' pipelines (seconds) for users who never need it."""

    target = "transformers.pipelines"

    def find_spec(self, name, path=None, target=None):
        if name != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            importlib.import_module("conveyor_hf.pipeline")  # registers the task

        spec.loader.exec_module = exec_module
        return spec


if "transformers.pipelines" in sys.modules:
    importlib.import_module("conveyor_hf.pipeline")
elif not any(isinstance(f, _RegisterPipelineOnImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterPipelineOnImport())
