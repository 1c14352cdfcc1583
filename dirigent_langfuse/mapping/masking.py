"""Masking (`mask`): the host's own function over what would leave the process.

Promises:
- The function is called as Langfuse's SDKs call theirs, `mask(data=value)`, on every `input`,
  `output`, `metadata` and `statusMessage` that is set, of traces and of observations, and its
  answer is sent instead. A function written for Langfuse's SDK works unchanged. Names, ids,
  times, model, usage and cost are never passed to it.
- It runs on the stream's worker thread, when an item is encoded, before anything is spooled or
  sent: a slow mask slows delivery, never the host's `on_event`. Over OTel it runs once per span
  (on the observation's merged fields) and once per change of a trace's metadata.
- A mask that raises never lets the value through: the value becomes `FAILED`, the failure is
  counted (`stats().mask_failures`) and logged (throttled) with the exception's type only, since
  its message could quote the very data being masked.
- A mask may answer any type: what is not JSON is encoded by the usual fallbacks, metadata that
  is no longer a mapping shows in Langfuse as {"metadata": <its text>} over either transport, and
  a status message that is no longer a string is sent as text (Langfuse's schema refuses anything
  else, and the whole item with it).
- `resolve("package.module:function")` turns a config's `mask` into the function, with a
  `ConfigError` naming `mask` when it cannot: the module cannot be imported (or raised while it
  was), the name is missing or not callable, or it cannot be called as `mask(data=value)`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Callable, Dict, Optional

from ..errors import ConfigError
from ..throttle import Throttled
from ..wire.encoding import as_text

__all__ = ["FAILED", "FIELDS", "Masker", "resolve"]

log = logging.getLogger(__name__)

FAILED = "<fully masked due to failed mask function>"  # the text Langfuse's SDK uses
FIELDS = ("input", "output", "metadata", "statusMessage")


def resolve(spec: str, stream: Optional[str] = None) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"must be 'package.module:function', got {spec!r}", stream=stream, key="mask")
    try:
        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {spec!r}: {exc}", stream=stream, key="mask") from None
    except Exception as exc:  # the module itself raised while it was imported
        raise ConfigError(f"cannot import {spec!r}: importing {module!r} raised {type(exc).__name__}: {exc}",
                          stream=stream, key="mask") from None
    if not callable(found):
        raise ConfigError(f"{spec!r} is not callable", stream=stream, key="mask")
    _check_call(found, repr(spec), stream)
    return found  # type: ignore[no-any-return]


def _check_call(fn: Callable[..., Any], what: str, stream: Optional[str]) -> None:
    """A function that cannot take `data=` would turn every value into FAILED: say so when the
    stream is made, not in the logs of a deployed service."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: they are called and judged then
        return
    try:
        signature.bind(data=None)
    except TypeError:
        raise ConfigError(f"{what} cannot be called as mask(data=value), as Langfuse's SDKs call it (its "
                          f"signature is {signature}; write it as def mask(*, data, **kwargs))",
                          stream=stream, key="mask") from None


class Masker:
    """The mask function with its failure count. Used from the worker thread only."""

    def __init__(self, fn: Callable[..., Any], name: str = "langfuse") -> None:
        """Raises `ConfigError` (key `mask`) for a function that cannot be called as `mask(data=value)`."""
        if not callable(fn):
            raise ConfigError(f"must be a function, got {type(fn).__name__}", stream=name, key="mask")
        _check_call(fn, getattr(fn, "__qualname__", type(fn).__name__), name)
        self.fn = fn
        self.name = name
        self.failures = 0
        self._throttled = Throttled(log)

    def __repr__(self) -> str:
        return f"Masker({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"

    def value(self, value: Any) -> Any:
        try:
            return self.fn(data=value)
        except Exception as exc:  # never the raw value
            self.failures += 1
            self._throttled(
                "mask", logging.ERROR, "stream %r: the mask function raised %s; the value was sent as %r instead",
                self.name, type(exc).__name__, FAILED,
            )
            return FAILED

    def body(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """A copy of `body` with its masked fields replaced (`body` itself when none is set): the
        host's objects and the mapping's are left as they are."""
        out = body
        for field in FIELDS:
            value = body.get(field)
            if value is not None:
                if out is body:
                    out = dict(body)
                masked = self.value(value)
                if field == "statusMessage" and masked is not None and not isinstance(masked, str):
                    masked = as_text(masked)  # Langfuse's schema: a string, or the whole item is refused
                out[field] = masked
        return out
