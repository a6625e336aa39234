"""Which engine decodes for the server, chosen once at start-up and shared by every request.

- ``--engine local``: transformers continuous batching (``ContinuousEngine``: concurrent
  requests decode in one batch, a request waiting for a tool leaves the batch) when
  :mod:`conveyor_hf.engines.continuous` exists and starts; otherwise ``GenerateEngine``
  behind :class:`~conveyor_hf.server.serial_engine.SerialEngine` (one request decodes at
  a time, none holds the decoder while its tools run). The start-up line and ``/health``
  say which, and why.
- ``--engine continuous`` / ``--engine generate``: that one, or an error.
- ``--engine URL``: ``RemoteEngine`` on any OpenAI-compatible ``/v1/completions`` server;
  the server renders chat templates with the tokenizer of ``--model``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor_hf.engines.base import Engine
from conveyor_hf.server.settings import ServerSettings

logger = logging.getLogger("conveyor_hf.server")

#: A tokenizer's ``model_max_length`` above this means "not set".
_NO_LIMIT = 10_000_000


@dataclass
class ServingEngine:
    """The engine every request shares, and what the server must know about it.

    ``kind`` is ``"continuous"``, ``"generate"`` (one request at a time) or ``"remote"``;
    ``note`` says why continuous batching is not used when it is not; ``context_length``
    is the model's window in tokens (None: unknown, the engine will say).
    """

    engine: Engine
    tokenizer: Any
    model_id: str
    kind: str
    context_length: int | None
    note: str | None = None

    @property
    def remote(self) -> bool:
        return self.kind == "remote"

    def describe(self) -> str:
        """One line for the start-up message and ``/health``."""
        line = self.engine.describe()
        return f"{line} ({self.note})" if self.note else line

    def close(self) -> None:
        self.engine.close()


def build_engine(settings: ServerSettings) -> ServingEngine:
    """Load the model (or connect to the remote engine) named by ``settings``."""
    if settings.remote:
        return _remote(settings)
    model, tokenizer = _load_local(settings)
    model_id = settings.served_model_name or _model_id(settings.model)
    context = _context_length(model, tokenizer)
    if settings.engine in ("local", "continuous"):
        engine, reason = _continuous(model)
        if engine is not None:
            capacity = getattr(engine, "capacity", None)  # its paged cache bounds one request too
            if isinstance(capacity, int) and capacity > 0:
                context = min(context, capacity) if context else capacity
            return ServingEngine(engine, tokenizer, model_id, "continuous", context)
        if settings.engine == "continuous":
            raise RuntimeError(f"--engine continuous: {reason}; use --engine generate (one request at a time)")
        note = f"continuous batching unavailable: {reason}"
    else:
        note = None
    from conveyor_hf.engines.generate import GenerateEngine
    from conveyor_hf.server.serial_engine import SerialEngine

    return ServingEngine(SerialEngine(GenerateEngine(model)), tokenizer, model_id, "generate", context, note)


def _continuous(model: Any) -> tuple[Engine | None, str | None]:
    """A ``ContinuousEngine`` for ``model``, or None and the reason it cannot be had."""
    name = "conveyor_hf.engines.continuous"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None, f"{name} is not part of this installation"
        return None, f"{name} needs {exc.name!r}, which is not installed"
    except Exception as exc:  # a broken module must not stop the server: fall back
        return None, f"importing {name} failed ({type(exc).__name__}: {exc})"
    engine = None
    try:
        engine = module.ContinuousEngine(model)
        start = getattr(engine, "start", None)
        if callable(start):
            start()  # its batching manager now, so a broken one falls back before the first request
        return engine, None
    except Exception as exc:
        logger.warning("ContinuousEngine could not start", exc_info=True)
        if engine is not None:
            engine.close()
        return None, f"ContinuousEngine could not start ({type(exc).__name__}: {exc})"


def _load_local(settings: ServerSettings) -> tuple[Any, Any]:
    import torch

    from conveyor_hf.models import load_default_model, load_model

    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.model:
        return load_model(settings.model, device=settings.device, verbose=False)
    return load_default_model(device=settings.device, verbose=False)


def _remote(settings: ServerSettings) -> ServingEngine:
    from conveyor_hf.engines.remote import RemoteEngine
    from conveyor_hf.models import load_tokenizer

    name = settings.engine_model
    if name is None:
        served = RemoteEngine.served_models(settings.engine, api_key=settings.api_key)
        if len(served) != 1:
            raise RuntimeError(f"{settings.engine} serves {served or 'no models'}; name one with --engine-model")
        name = served[0]
    tokenizer = load_tokenizer(settings.model, verbose=False)
    engine = RemoteEngine(settings.engine, model=name, api_key=settings.api_key)
    context = _remote_context_length(settings, name) or _context_length(None, tokenizer)
    return ServingEngine(engine, tokenizer, settings.served_model_name or _model_id(name), "remote", context)


def _remote_context_length(settings: ServerSettings, name: str) -> int | None:
    """``max_model_len`` from the remote ``/v1/models`` (vLLM and SGLang list it)."""
    import httpx

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        entries = httpx.get(f"{settings.engine.rstrip('/')}/models", headers=headers, timeout=10).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == name and isinstance(entry.get("max_model_len"), int):
            return entry["max_model_len"]
    return None


def _context_length(model: Any, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < _NO_LIMIT else None


def _model_id(model: str | None) -> str:
    if model is None:
        from conveyor_hf.models import DEFAULT_MODEL_NAME

        return DEFAULT_MODEL_NAME
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else (path.name if path.exists() else model)
