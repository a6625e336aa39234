"""``ContinuousEngine``: in-process decoding on transformers' continuous batching.

One long-lived engine serves any number of concurrent ``generate`` calls (a server makes
one and calls ``generate`` from every request thread). Each conversation round is one
streaming request to a ``ContinuousBatchingManager`` (``model.init_continuous_batching()``):
the manager's background thread decodes all requests in flight together in one paged KV
cache, a request joining or leaving the batch between any two steps. Each new token id
goes to its conversation (``Conversation.feed_token``); when the conversation stops (a
call closed), its request is cancelled at once (``cancel_request``), so **a conversation
waiting for a tool holds no decode slot**. The tools finish, and a new request continues
from prompt + kept tokens + appended result. With block prefix sharing (on by default)
that request finds the KV blocks of everything it shares with the cancelled one in the
cache and prefills only the tokens past the last shared full block (``page_size``).

What was found on transformers 5.24, CPU, and is handled here:

- The manager sizes its cache from free memory when ``num_blocks`` / ``max_batch_tokens``
  are unset (on CPU 60 % of free RAM, gigabytes zeroed before the first step: the
  warm-up of many seconds people see with ``generate_batch``). The engine sizes it
  explicitly (``max_cache_tokens``), and the first request is then as fast as later ones.
- A cancelled request never reports a final result: the scheduler drops it silently.
  The engine never waits for one; a request's outputs are routed by id and those of a
  request already cancelled are discarded.
- A single request larger than the whole cache kills the manager's thread (a fatal
  "no requests can be scheduled"). The engine refuses such a request before it is sent.
- The manager's thread is not a daemon: a process that forgets ``close()`` would never
  exit. The engine starts it from a daemon thread (daemon-ness is inherited).
- Sampling is fixed per manager (``do_sample`` is read once). The engine keeps one manager
  for greedy requests and creates a second, with per-request temperature / top-k /
  top-p, the first time a sampled request arrives.

Example::

    from conveyor_hf import ConveyorGenerator, load_default_model
    from conveyor_hf.engines import ContinuousEngine
    from conveyor_hf.tools import PythonTool

    model, tokenizer = load_default_model()
    engine = ContinuousEngine(model)            # share it between threads
    with ConveyorGenerator(engine, tokenizer, tools=[PythonTool()]) as gen:
        out = gen.generate([{"role": "user", "content": "Use Python to compute 2**100."}],
                           max_new_tokens=200)
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig

from conveyor_hf.engines.base import Engine

if TYPE_CHECKING:
    from conveyor_hf.conversation import Conversation
    from conveyor_hf.loop import ToolLoop

logger = logging.getLogger(__name__)

#: GenerationConfig fields mapped to each request (the rest must stay at their defaults).
_MAPPED_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p"}
#: Fields the tool loop itself sets or reads.
_LOCAL_FIELDS = {
    "max_length", "num_return_sequences", "pad_token_id", "eos_token_id", "bos_token_id",
    "return_dict_in_generate", "transformers_version", "_from_model_config", "use_cache",
}
#: Placeholders that make the sampling manager build its per-request warpers (each request
#: then sends its own values): transformers only builds a warper whose default is not a no-op.
_SAMPLING_PLACEHOLDERS = {"temperature": 0.5, "top_k": 50, "top_p": 0.5}
#: Seconds between two polls of a request's output queue (cancellation, a dead manager).
_POLL = 0.05


class ContinuousEngineError(RuntimeError):
    """The continuous batching manager could not decode: it died, stopped, or went silent.
    The message says what happened and what to do."""


class ContinuousEngine(Engine):
    """Decodes concurrent conversations together with transformers' continuous batching.

    Args:
      model: a transformers causal LM (``PreTrainedModel`` with ``init_continuous_batching``).
      max_cache_tokens: tokens the paged KV cache holds, all requests together (memory:
        ``max_cache_tokens`` x layers x 2 x KV heads x head dim x dtype size). A request
        whose prompt + ``max_new_tokens`` exceeds it is refused.
      page_size: tokens per cache block; prefix sharing reuses whole blocks, so a resumed
        conversation re-prefills the appended result and about one block of what it had.
      max_batch_tokens: tokens one forward pass takes (decode steps and prefill chunks).
      prefix_sharing: reuse the KV blocks of identical prefixes (a resumed conversation,
        prompts sharing a system message). Off: every round prefills its whole prompt.
      timeout: seconds a request may go without a new token before it is reported as an
        error (the manager is stuck or far overloaded).

    Generation keywords: ``max_new_tokens`` (counted over the whole answer), ``do_sample``,
    ``temperature``, ``top_k``, ``top_p``; others are refused by name. ``replay=`` is refused
    (a per-request logits processor cannot be given to the manager). ``close()`` stops the
    manager's threads; the engine cannot be used after it. Generators given the engine do
    not close it: its owner does, once every generator sharing it is done.
    The timeline's ``prefill_tokens`` stays 0 (the manager does not report what the prefix
    cache saved). An ``eager`` model is switched to ``paged|eager`` attention while a
    manager runs (``sdpa`` models are left as they are).
    """

    name = "continuous"
    supports_replay = False

    def __init__(
        self,
        model: Any,
        *,
        max_cache_tokens: int = 8192,
        page_size: int = 32,
        max_batch_tokens: int = 256,
        prefix_sharing: bool = True,
        timeout: float = 300.0,
    ) -> None:
        if not hasattr(model, "init_continuous_batching"):
            raise TypeError(
                f"ContinuousEngine needs a transformers model with init_continuous_batching() (transformers >= 5), "
                f"got {type(model).__name__}; use GenerateEngine(model) for other models"
            )
        if page_size < 4:
            raise ValueError(f"page_size={page_size} must be >= 4 (tokens per cache block)")
        if max_cache_tokens < page_size:
            raise ValueError(f"max_cache_tokens={max_cache_tokens} must hold at least one block of {page_size}")
        if max_batch_tokens < 1 or timeout <= 0:
            raise ValueError(f"max_batch_tokens={max_batch_tokens} and timeout={timeout} must be > 0")
        self.model = model
        self.page_size = int(page_size)
        self.num_blocks = int(max_cache_tokens) // self.page_size
        self.max_batch_tokens = int(max_batch_tokens)
        self.prefix_sharing = bool(prefix_sharing)
        self.timeout = float(timeout)
        self._managers: dict[bool, _Manager] = {}  # do_sample -> its manager
        self._lock = threading.Lock()
        self._closed = False

    # -- what the tool loop reads -----------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def capacity(self) -> int:
        """Tokens the cache holds: the most one request (prompt + new tokens) may take."""
        return self.num_blocks * self.page_size

    def default_generation_config(self) -> GenerationConfig:
        return self.model.generation_config

    def check_options(self, config: GenerationConfig, extra: dict[str, Any]) -> None:
        unknown = sorted(set(_asked_fields(config)) - _MAPPED_FIELDS - _LOCAL_FIELDS)
        unknown += sorted(extra)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} cannot be used with the continuous batching engine: each request takes "
                "max_new_tokens, do_sample, temperature, top_k and top_p; remove the others (or use the generate "
                "engine, ConveyorGenerator(model, ...), which takes every model.generate keyword)"
            )
        if (config.num_beams or 1) > 1:
            raise ValueError(f"num_beams={config.num_beams} is not supported with tool calls; use num_beams=1")
        config.return_dict_in_generate = False  # ConveyorOutput already is the dict form

    def describe(self) -> str:
        sharing = "prefix sharing" if self.prefix_sharing else "no prefix sharing"
        return (f"continuous batching ({type(self.model).__name__} on {self.device}, {self.capacity} cache tokens, "
                f"page {self.page_size}, {sharing})")

    # -- lifecycle --------------------------------------------------------------------
    def start(self, *, sampling: bool = False) -> None:
        """Start the (greedy, or sampling) manager now rather than on the first request."""
        self._manager(sampling)

    def close(self) -> None:
        """Stop the managers' threads; requests still decoding end with an error. Idempotent."""
        with self._lock:
            self._closed = True
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.close()

    def __enter__(self) -> "ContinuousEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Requests the managers hold now: ``decoding`` (in the batch), ``waiting`` (queued
        or not yet scheduled) and ``followed`` (rounds of conversations being decoded).
        A conversation waiting for a tool is in none of them."""
        with self._lock:
            managers = list(self._managers.values())
        totals = {"decoding": 0, "waiting": 0, "followed": 0}
        for manager in managers:
            for key, value in manager.stats().items():
                totals[key] += value
        return totals

    def _manager(self, sampling: bool) -> "_Manager":
        with self._lock:
            if self._closed:
                raise ContinuousEngineError("this ContinuousEngine was closed; create a new one")
            manager = self._managers.get(sampling)
            if manager is not None and not manager.alive:
                logger.warning("the continuous batching manager stopped (%s); starting a new one", manager.death)
                manager.close()
                manager = None
            if manager is None:
                manager = _Manager(self._new_manager(sampling), self.timeout)
                self._managers[sampling] = manager
            return manager

    def _new_manager(self, sampling: bool) -> Any:
        from transformers import ContinuousBatchingConfig

        base = self.model.generation_config
        config = GenerationConfig(do_sample=sampling, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                                  **(_SAMPLING_PLACEHOLDERS if sampling else {}))
        cb_config = ContinuousBatchingConfig(
            page_size=self.page_size, num_blocks=self.num_blocks, max_batch_tokens=self.max_batch_tokens,
            allow_block_sharing=self.prefix_sharing, per_request_processors=sampling,
            drop_unsupported_processors=False,
        )
        manager = self.model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config)
        if self.device.type != "cpu":
            manager.warmup()  # graphs / compile on accelerators; nothing to do on CPU
        _start_as_daemon(manager)
        return manager

    # -- decoding ---------------------------------------------------------------------
    def run(self, loop: "ToolLoop") -> None:
        """Each conversation on its own thread: request, feed, cancel at a stop, settle, resume."""
        if loop.cache is not None:
            raise ValueError("cache= cannot be used with the continuous batching engine: it decodes into its own "
                             "paged cache shared by all requests; remove it")
        for conv in loop.conversations:
            if len(conv.prompt) + conv.budget > self.capacity:
                raise ValueError(
                    f"a prompt of {len(conv.prompt)} tokens plus max_new_tokens={conv.budget} does not fit in the "
                    f"engine's cache of {self.capacity} tokens; shorten them or raise "
                    "ContinuousEngine(max_cache_tokens=...)"
                )
        manager = self._manager(bool(loop.config.do_sample))
        conversations = loop.conversations
        if len(conversations) == 1:
            self._drive(manager, loop, conversations[0])
            return
        with ThreadPoolExecutor(max_workers=len(conversations), thread_name_prefix="conveyor-cb") as pool:
            futures = [pool.submit(self._drive, manager, loop, conv) for conv in conversations]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def _drive(self, manager: "_Manager", loop: "ToolLoop", conv: "Conversation") -> None:
        """Decode one conversation to its end, one request per round."""
        while True:
            conv.begin_round()
            rnd = loop.begin_round(conv.round_index, row=conv.row)
            ids = conv.prompt + conv.tokens
            left = conv.budget - conv.generated
            if left + len(ids) > self.capacity:
                new_ids, error = [], (f"the answer outgrew the engine's cache ({len(ids)} tokens + {left} to "
                                      f"decode > {self.capacity}); raise ContinuousEngine(max_cache_tokens=...)")
            elif left <= 0:
                new_ids, error = [], None
            else:
                new_ids, error = manager.decode(ids, left, loop, conv)
            rnd.decode_end = time.perf_counter()
            rnd.new_tokens = len(new_ids)
            if error is not None:
                conv.stop, conv.error = "error", error
                if conv.round_index == 0 and not new_ids:
                    loop.end_round(rnd)
                    raise ContinuousEngineError(error)
            elif conv.stop is None:
                conv.stop = "length"
            suffix = loop.settle(conv, new_ids, eos_token_last=True)
            loop.end_round(rnd)
            if suffix is None or conv.stop == "error":
                return


class _Manager:
    """One ``ContinuousBatchingManager`` and the thread that routes its outputs to requests.

    The manager puts every request's outputs on one queue; a router thread hands each to
    the queue of the request it belongs to, and drops those of requests no longer followed
    (cancelled: the manager never reports their end).
    """

    _ids = itertools.count()

    def __init__(self, manager: Any, timeout: float) -> None:
        self.manager = manager
        self.timeout = timeout
        self._followed: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._router = threading.Thread(target=self._route, name="conveyor-cb-router", daemon=True)
        self._router.start()

    @property
    def alive(self) -> bool:
        return self.manager.is_running() and self.manager.background_thread_status.fatal_error is None

    @property
    def death(self) -> str:
        error = self.manager.background_thread_status.fatal_error
        return f"it failed: {error}" if error is not None else "its thread is not running"

    def decode(self, ids: list[int], max_new_tokens: int, loop: "ToolLoop",
               conv: "Conversation") -> tuple[list[int], str | None]:
        """One streaming request: feed each new token to ``conv``; cancel it when ``conv`` stops.
        Returns the ids decoded (up to the stop) and an error message, or None."""
        request_id = f"conveyor-{next(self._ids)}"
        outputs: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._followed[request_id] = outputs  # before add_request: the first token may come at once
        new_ids: list[int] = []
        finished = False
        try:
            added = self.manager.add_request(
                ids, request_id=request_id, max_new_tokens=max_new_tokens, streaming=True,
                eos_token_id=sorted(loop.eos_token_ids) or -1, **_sampling_kwargs(loop.config),
            )
            if added is None:
                return new_ids, f"the continuous batching manager does not accept requests ({self.death})"
            seen, last = 0, time.monotonic()
            while True:
                try:
                    output = outputs.get(timeout=_POLL)
                except queue.Empty:
                    if loop.cancelled:
                        conv.stop = "cancelled"
                        return new_ids, None
                    if not self.alive:
                        return new_ids, f"the continuous batching manager stopped while decoding ({self.death})"
                    if time.monotonic() - last > self.timeout:
                        return new_ids, (f"no new token for {self.timeout:g}s; the machine is overloaded or the "
                                         "manager is stuck: raise ContinuousEngine(timeout=...) or lower the load")
                    continue
                last = time.monotonic()
                if output.error is not None:
                    finished = True
                    return new_ids, f"the continuous batching manager failed the request: {output.error}"
                tokens = output.generated_tokens
                for token in tokens[seen:]:
                    new_ids.append(int(token))
                    if conv.feed_token(int(token)) is not None:
                        break
                seen = len(tokens)
                finished = output.is_finished()
                if conv.stop is not None or finished:
                    return new_ids, None
        finally:
            with self._lock:
                self._followed.pop(request_id, None)
            if not finished:
                self.manager.cancel_request(request_id)  # leaves the batch at the next step

    def stats(self) -> dict[str, int]:
        processor = self.manager.batch_processor
        scheduler = getattr(processor, "scheduler", None)
        queued = self.manager.input_queue.qsize()
        with self._lock:
            followed = len(self._followed)
        if scheduler is None:
            return {"decoding": 0, "waiting": queued, "followed": followed}
        return {"decoding": len(scheduler.active_requests), "waiting": len(scheduler.waiting_requests) + queued,
                "followed": followed}

    def close(self) -> None:
        """Stop the manager (failing what is in flight) and the router."""
        self._closing.set()
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=30, hard_stop=True)
        self._router.join(timeout=5)

    def _route(self) -> None:
        while not self._closing.is_set():
            output = self.manager.get_result(timeout=0.1)
            if output is None:
                if not self.manager.is_running():
                    self._closing.wait(0.1)  # get_result returns at once when the thread is gone
                continue
            with self._lock:
                outputs = self._followed.get(output.request_id)
            if outputs is not None:
                outputs.put(output)


def _asked_fields(config: GenerationConfig) -> list[str]:
    """The fields of ``config`` that differ from transformers' defaults (False and None
    both mean "off": a model's ``output_attentions: false`` asks for nothing)."""
    defaults = GenerationConfig().to_dict()
    return [key for key, value in config.to_diff_dict().items()
            if not (value in (None, False) and defaults.get(key) in (None, False))]


def _sampling_kwargs(config: GenerationConfig) -> dict[str, Any]:
    """The per-request warper values of a sampled request (``generate``'s semantics:
    ``top_k`` 0 or None and ``top_p`` 1.0 keep every token)."""
    if not config.do_sample:
        return {}
    top_k = int(config.top_k or 0)
    return {
        "temperature": float(config.temperature if config.temperature is not None else 1.0),
        "top_k": top_k if top_k > 0 else 2**31 - 1,
        "top_p": float(config.top_p if config.top_p is not None else 1.0),
    }


def _start_as_daemon(manager: Any) -> None:
    """``manager.start()`` from a daemon thread, so its generation thread (which inherits
    daemon-ness) never keeps the interpreter alive at exit."""
    starter = threading.Thread(target=manager.start, name="conveyor-cb-start", daemon=True)
    starter.start()
    starter.join()
    if not manager.is_running():
        raise ContinuousEngineError("the continuous batching manager did not start; see the log for its error")
