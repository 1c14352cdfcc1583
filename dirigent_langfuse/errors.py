"""The exception hierarchy: everything this package raises derives from `DirigentLangfuseError`.

Messages name the thing a user has to change (an event type and field, a stream and key, an
HTTP status and Langfuse's own message) and never contain a secret.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "DirigentLangfuseError",
    "BusEventError",
    "ConfigError",
    "RegistryError",
    "LangfuseError",
    "LangfuseStatusError",
    "LangfuseTransportError",
]


class DirigentLangfuseError(Exception):
    """Root of every error this package raises on purpose."""


class BusEventError(DirigentLangfuseError, ValueError):
    """A BusEvent could not be decoded or built: `event_type` and `field` say which."""

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        self.event_type = event_type
        self.field = field
        self.problem = problem
        super().__init__(f"{event_type}: field {field!r} {problem}")


class ConfigError(DirigentLangfuseError, ValueError):
    """A stream's configuration is wrong: `stream` and `key` say where (never the secret value)."""

    def __init__(self, problem: str, *, stream: Optional[str] = None, key: Optional[str] = None) -> None:
        self.stream = stream
        self.key = key
        self.problem = problem
        where = []
        if stream is not None:
            where.append(f"stream {stream!r}")
        if key is not None:
            where.append(f"key {key!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + problem)


class RegistryError(DirigentLangfuseError, LookupError):
    """A stream kind is registered twice, or is not registered at all."""


class LangfuseError(DirigentLangfuseError):
    """A request to Langfuse did not succeed. `retries`: how many HTTP-level retries it took first."""

    retries: int = 0


class LangfuseStatusError(LangfuseError):
    """Langfuse answered with an error status (the seed's `LangfuseError::Status(code)`).

    `status` is the HTTP status, `message` what Langfuse said (shortened, never a header), and
    `retry_after` the seconds a 429 or 503 asked us to wait, when it said.
    """

    def __init__(self, status: int, message: str = "", retry_after: Optional[float] = None) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
        text = f"Langfuse answered HTTP {status}"
        if message:
            text += f": {message}"
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        """True for answers that may succeed later (429, 5xx): the worker keeps the batch."""
        return self.status == 429 or self.status >= 500


class LangfuseTransportError(LangfuseError):
    """No answer from Langfuse: connection refused or reset, DNS, TLS, a timeout, or an HTTP 2xx
    whose body is not Langfuse's answer (a proxy's or a web server's page: `host` is wrong, or
    something in between answers for it). The items were not taken: they are kept and retried."""

    retryable = True
