"""``APIError``: a request the server refuses, and the OpenAI-shaped JSON error it becomes.

Clients built on the ``openai`` package turn ``{"error": {"message", "type", "param",
"code"}}`` with a 4xx/5xx status into ``BadRequestError``, ``RateLimitError`` … showing
the message, so every refusal names the value and the fix in ``message``.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

#: OpenAI's error ``type`` per status class.
_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_exceeded", 503: "service_unavailable", 502: "upstream_error"}


class APIError(Exception):
    """An HTTP error answer: status, a message that says what to do, and optionally the
    offending request field (``param``), a machine-readable ``code`` and headers."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        """The JSON body: OpenAI's error object."""
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.payload(), status_code=self.status, headers=self.headers)
