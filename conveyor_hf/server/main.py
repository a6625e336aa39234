"""``serve``: start the runtime, say what runs, and serve it with uvicorn until stopped.

The start-up lines name the engine (continuous batching, or one request at a time and
why), the tools, the sandbox tool processes run in, and the limits; ``GET /health``
repeats them.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

from conveyor_hf.server.settings import ServerSettings

if TYPE_CHECKING:
    from conveyor_hf.tools.base import Tool

#: Seconds in-flight requests get to finish when the server is stopped.
GRACEFUL_SHUTDOWN = 5


def serve(settings: ServerSettings, *, out: TextIO = sys.stderr, templates: "list[Tool] | None" = None) -> None:
    """Run ``conveyor-hf serve`` with ``settings``; returns when the server stops.
    ``templates``: tool instances to serve instead of ``settings.tools`` (see
    :meth:`~conveyor_hf.server.runtime.ServerRuntime.start`)."""
    import uvicorn

    from conveyor_hf.server.app import create_app
    from conveyor_hf.server.runtime import ServerRuntime

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per remote-engine request
    print(f"conveyor-hf serve: loading {'the engine' if settings.remote else 'the model'} and starting "
          f"{settings.kernel_pool} kernels ...", file=out, flush=True)
    runtime = ServerRuntime.start(settings, templates=templates)
    try:
        for line in startup_lines(runtime):
            print(line, file=out, flush=True)
        config = uvicorn.Config(create_app(runtime), host=settings.host, port=settings.port, log_level="info",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN, lifespan="on")
        uvicorn.Server(config).run()
    finally:
        runtime.close()


def startup_lines(runtime) -> list[str]:
    """What the server tells its operator before it listens."""
    s = runtime.settings
    lines = [
        f"conveyor-hf serve: http://{s.host}:{s.port}/v1 · model {runtime.serving.model_id} · "
        f"mode {s.mode} · tools {','.join(t.name for t in runtime.templates) or 'none'}",
        f"engine: {runtime.serving.describe()}",
        f"limits: {s.max_concurrency} requests at once, {s.max_queue} queued (then 429), "
        f"kernel pool {s.kernel_pool}, max_tokens {s.max_tokens} by default, "
        f"context {runtime.serving.context_length or 'unknown'} tokens",
    ]
    sandbox = runtime.sandbox_line()
    if sandbox:
        lines.append(sandbox)
    return lines
