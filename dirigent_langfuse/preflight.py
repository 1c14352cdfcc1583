"""`dirigent-langfuse check`'s work: a stream's configuration, host and keys tried with one
request that sends nothing, and what is wrong said plainly (never a secret).

An exit code with it: 0 ok, 1 Langfuse said no or could not be reached, 2 bad configuration.
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

from .config import LangfuseConfig
from .delivery.client import LangfuseClient
from .errors import ConfigError, LangfuseStatusError, LangfuseTransportError
from .mapping.masking import resolve as resolve_mask
from .wire.auto import choose_transport

__all__ = ["check_stream"]


def check_stream(name: str, params: Mapping[str, Any]) -> Tuple[int, str]:
    """(exit code: 0 ok, 1 Langfuse said no or could not be reached, 2 bad configuration; what to print)."""
    try:
        config = LangfuseConfig.from_params(params, stream=name)
        if config.mask:
            resolve_mask(config.mask, stream=name)  # as the stream would, when it is made
        client = LangfuseClient(config)  # (what requests reads from the environment: a CA bundle)
    except ConfigError as exc:
        return 2, f"configuration: {exc}"
    good, text = _check_client(config, client)
    return (0 if good else 1), text


def _check_client(config: LangfuseConfig, client: LangfuseClient) -> Tuple[bool, str]:
    try:
        version = None
        transport = config.transport
        if transport != "otel":  # the same unauthenticated health check that `auto` makes
            version, reached = client.health()
            if not reached and transport == "auto":  # no transport to blame: it was never chosen
                return False, (f"cannot reach {config.host}: GET /api/public/health had no answer (or a 5xx or "
                               "429 after the retries), so no transport could be chosen")
        if transport == "auto":
            transport = choose_transport(version)
        elif transport == "ingestion" and choose_transport(version) == "otel" and version:
            return False, (f"{config.host} runs Langfuse {version}, which refuses the ingestion API's trace and "
                           "observation events: set transport = \"otel\" (or \"auto\")")
        client.check_auth(transport)
    except LangfuseTransportError as exc:
        return False, f"cannot reach {config.host}: {exc}"
    except LangfuseStatusError as exc:
        if exc.status in (401, 403):
            return False, f"{config.host} refused the keys (HTTP {exc.status}): check public_key and secret_key"
        if exc.status == 404:
            return False, f"{config.host} does not look like Langfuse, or has no {transport} endpoint (HTTP 404)"
        return False, f"{config.host} answered HTTP {exc.status}: {exc.message}"
    finally:
        client.close()
    told = f"Langfuse {version}, " if version else ""
    return True, f"ok: {config.host}, {told}keys accepted, transport {transport}"
