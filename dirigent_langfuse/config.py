"""`LangfuseConfig`: every knob of a Langfuse stream, validated once, with a safe repr.

The constructor reads Langfuse's SDK environment variables (`ENV`: `LANGFUSE_BASE_URL` or the
older `LANGFUSE_HOST`, `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`, `LANGFUSE_TRACING_ENABLED`, ...)
for every field it is not given, as Langfuse's SDKs do: an explicit argument always wins.
`from_params` reads a stream's TOML `params` table the same way, from the environment it is given.
"""

from __future__ import annotations

import functools
import math
import os
import re
import urllib.parse
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import attrs

from .errors import ConfigError
from .wire.limits import ENVIRONMENT

__all__ = ["LangfuseConfig", "TRANSPORTS"]

TRANSPORTS = ("auto", "ingestion", "otel")
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _env_bool(text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


class _Env:
    """A field that Langfuse's SDKs read from the environment: the variables (first set wins; an
    empty one counts as unset), how the text is read, what it must be, and the default without it."""

    __slots__ = ("variables", "parse", "expected", "default")

    def __init__(self, variables: Tuple[str, ...], parse: Callable[[str], Any] = str, expected: str = "",
                 default: Any = None) -> None:
        self.variables = variables
        self.parse = parse
        self.expected = expected
        self.default = default


# The environment variables of Langfuse's SDKs, read by the constructor (and by `from_params`, from
# the environment it is given) for each field not given: an explicit value always wins.
# LANGFUSE_BASE_URL is what Langfuse's UI and current SDKs write; LANGFUSE_HOST the older name.
ENV: Dict[str, _Env] = {
    "host": _Env(("LANGFUSE_BASE_URL", "LANGFUSE_HOST")),
    "public_key": _Env(("LANGFUSE_PUBLIC_KEY",)),
    "secret_key": _Env(("LANGFUSE_SECRET_KEY",)),
    "environment": _Env(("LANGFUSE_TRACING_ENVIRONMENT",)),
    "release": _Env(("LANGFUSE_RELEASE",)),
    "tracing_enabled": _Env(("LANGFUSE_TRACING_ENABLED",), _env_bool, "true or false", True),
    "sample_rate": _Env(("LANGFUSE_SAMPLE_RATE",), float, "a number from 0 to 1", 1.0),
    "batch_size": _Env(("LANGFUSE_FLUSH_AT",), int, "a whole number of at least 1", 32),
    "flush_interval": _Env(("LANGFUSE_FLUSH_INTERVAL",), float, "a positive number of seconds", 1.0),
    "connect_timeout": _Env(("LANGFUSE_TIMEOUT",), float, "a positive number of seconds", 5.0),
    "read_timeout": _Env(("LANGFUSE_TIMEOUT",), float, "a positive number of seconds", 10.0),
    "debug": _Env(("LANGFUSE_DEBUG",), _env_bool, "true or false", False),
}


def _required(key: str, given: str = "set it") -> str:
    """The problem of a missing host or key: where it may be `given`, or the variables read."""
    return f"is required ({given}, or {' or '.join(ENV[key].variables)})"


def from_env(key: str, env: Mapping[str, str]) -> Any:
    """Field `key` as `env` sets it, else its default; a ConfigError naming the field and the
    variable for text that does not read (never showing a key's text: keys are read as they are)."""
    spec = ENV[key]
    for var in spec.variables:
        text = env.get(var)
        if text:
            try:
                return spec.parse(text.strip() if spec.parse is not str else text)
            except ValueError:
                raise ConfigError(f"from {var} must be {spec.expected}, got {_got(text)}", key=key) from None
    return spec.default


def _env(key: str) -> Any:
    """The default of a field read from the process's environment when the config is made."""
    return attrs.Factory(functools.partial(from_env, key, os.environ))


def _host(value: str) -> str:
    """The base URL, without a trailing slash. It must not carry credentials: they would show
    wherever the host does (reprs, log lines), and the keys go in the Authorization header."""
    if value is None:
        raise ConfigError(_required("host"), key="host")
    if not isinstance(value, str):
        raise ConfigError("must be a string URL", key="host")
    value = value.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"is not a URL ({exc}): {_shown(value)!r}", key="host") from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError("must not carry a user name or password (the keys are public_key and secret_key); "
                          f"got {_shown(value)!r}", key="host")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"must be an http:// or https:// URL, got {_shown(value)!r}", key="host")
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        raise ConfigError(f"must be a base URL, without a query, a fragment or spaces; got {_shown(value)!r}", key="host")
    api = parts.path.lower().find("/api/public")
    if api >= 0:  # an endpoint pasted for the base URL: every request would be a 404
        base = value[: len(value) - len(parts.path) + api]
        raise ConfigError(f"is an API endpoint ({_shown(value)!r}); give Langfuse's base URL, the one its web "
                          f"UI is served at: {_shown(base)!r} (the paths under /api/public are added)", key="host")
    return value


def _shown(url: str) -> str:
    """`url` as an error may show it: whatever stands before an `@` in its authority is hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}"


def _key_text(value: Any) -> Any:
    """Keys without the whitespace around them (a key read from a file or a secret ends in a newline)."""
    return value.strip() if isinstance(value, str) else value


def _number(value: Any) -> bool:
    """A finite int or float (TOML has `inf` and `nan`: a timeout of either would never end, or
    end at once, and a wait of `inf` seconds raises OverflowError; so would an int past a
    float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _got(value: Any) -> str:
    """A wrong value as an error shows it: its repr, cut short (an int past Python's 4,300-digit
    limit has none)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _positive(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not _number(value) or value <= 0:
        raise ConfigError(f"must be a finite positive number, got {_got(value)}", key=attribute.name)


def _non_negative(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not _number(value) or value < 0:
        raise ConfigError(f"must be zero or a finite positive number, got {_got(value)}", key=attribute.name)


def _whole(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be a whole number of at least 1, got {_got(value)}", key=attribute.name)


def _key(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(_required(attribute.name) + " and must be a non-empty string", key=attribute.name)
    for position, char in enumerate(value):
        if not "!" <= char <= "~":  # printable ASCII, no space: never more of a secret than its position
            what = "a space or a control character" if char.isspace() or ord(char) < 0x20 else f"U+{ord(char):04X}"
            raise ConfigError(f"has {what} at position {position + 1}; Langfuse's keys are printable ASCII "
                              "(a quote or a space copied with the key?)", key=attribute.name)


def _bool(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {_got(value)}", key=attribute.name)


def _opt_text(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"must be a non-empty string when set, got {_got(value)}", key=attribute.name)




def _environment(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """Langfuse's own rule for environment names: it refuses anything else, every span with it."""
    if value is not None and not (isinstance(value, str) and ENVIRONMENT.fullmatch(value)):
        raise ConfigError(
            f"must be lower-case letters, digits, '-' or '_', at most 40, not starting with 'langfuse' "
            f"(Langfuse's rule), got {_got(value)}",
            key=attribute.name,
        )


def _ca_bundle(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be the path of a CA certificate file or directory, got {_got(value)}", key=attribute.name)
    if not os.path.exists(value):
        raise ConfigError(f"no such file or directory: {_got(value)}", key=attribute.name)


def _fraction(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not _number(value) or not 0 <= value <= 1:
        raise ConfigError(f"must be a number from 0 to 1, got {_got(value)}", key=attribute.name)


def _mask_spec(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """'package.module:function', imported when the stream is made (see mapping/masking.py)."""
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[\w.]+:[\w.]+", value)):
        raise ConfigError(f"must be 'package.module:function', got {_got(value)}", key=attribute.name)


def _one_of(*choices: str) -> Any:
    def check(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value not in choices:
            raise ConfigError(f"must be one of {list(choices)}, got {_got(value)}", key=attribute.name)

    return check


@attrs.frozen(kw_only=True)
class LangfuseConfig:
    """How a Langfuse stream connects, batches, retries and bounds itself.

    Delivery: `batch_size` items per request at most (and `max_request_bytes`); a partial batch
    waits at most `flush_interval` seconds. HTTP: `max_retries` retries of 5xx, 429 and connection
    errors inside one send, backing off `backoff_base` → ×2 → capped at `backoff_max` (and as many
    re-sends of an item a 207 refused with a 5xx or 429, before it is dropped), each request
    bounded by `connect_timeout` and `read_timeout`. Bounds: the caller's queue holds
    `max_queue_items` (beyond, `on_event` answers FAILED(OVERFLOW) and counts the drop); failed
    batches wait in a retry buffer of `max_buffer_items` / `max_buffer_bytes`. Sampling:
    `sample_rate` of the sessions are mirrored, each kept or left out whole (see mapping/sampling.py).
    Masking: `mask` names a function applied to what leaves the process (see mapping/masking.py).
    `tracing_enabled = false` (or `LANGFUSE_TRACING_ENABLED=false`) turns the stream off: every
    event is SKIPPED, nothing is queued, no thread starts and nothing is sent.
    """

    host: str = attrs.field(default=_env("host"), converter=_host)
    public_key: str = attrs.field(default=_env("public_key"), converter=_key_text, validator=_key)
    secret_key: str = attrs.field(default=_env("secret_key"), converter=_key_text, validator=_key, repr=False)
    transport: str = attrs.field(default="auto", validator=_one_of(*TRANSPORTS))
    batch_size: int = attrs.field(default=_env("batch_size"), validator=_whole)
    max_inflight: int = attrs.field(default=2, validator=_whole)
    flush_interval: float = attrs.field(default=_env("flush_interval"), validator=_positive)
    max_queue_items: int = attrs.field(default=100_000, validator=_whole)
    max_retries: int = attrs.field(default=3, validator=_non_negative)
    backoff_base: float = attrs.field(default=0.1, validator=_non_negative)
    backoff_max: float = attrs.field(default=1.0, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)
    connect_timeout: float = attrs.field(default=_env("connect_timeout"), validator=_positive)
    read_timeout: float = attrs.field(default=_env("read_timeout"), validator=_positive)
    flush_timeout: float = attrs.field(default=30.0, validator=_positive)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_positive)
    degraded_after: int = attrs.field(default=1, validator=_whole)
    unavailable_after: int = attrs.field(default=5, validator=_whole)
    late_bind_buffer: bool = attrs.field(default=True, validator=_bool)
    pending_max_keys: int = attrs.field(default=1000, validator=_whole)
    pending_max_events_per_key: int = attrs.field(default=1000, validator=_whole)
    pending_ttl: float = attrs.field(default=600.0, validator=_positive)
    max_sessions: int = attrs.field(default=10_000, validator=_whole)
    session_ttl: float = attrs.field(default=86_400.0, validator=_positive)
    max_open_observations: int = attrs.field(default=10_000, validator=_whole)
    late_start_wait: float = attrs.field(default=5.0, validator=_non_negative)
    max_buffer_items: int = attrs.field(default=100_000, validator=_whole)
    max_buffer_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_whole)
    max_request_bytes: int = attrs.field(default=3_500_000, validator=_whole)
    max_item_bytes: int = attrs.field(default=1_000_000, validator=_whole)
    retry_backoff_max: float = attrs.field(default=30.0, validator=_positive)
    spool_path: Optional[str] = attrs.field(default=None, validator=_opt_text)
    environment: Optional[str] = attrs.field(default=_env("environment"), validator=_environment)
    release: Optional[str] = attrs.field(default=_env("release"), validator=_opt_text)
    atexit_flush: bool = attrs.field(default=True, validator=_bool)
    fork_wait: float = attrs.field(default=1.0, validator=_non_negative)
    sample_rate: float = attrs.field(default=_env("sample_rate"), validator=_fraction)
    tracing_enabled: bool = attrs.field(default=_env("tracing_enabled"), validator=_bool)
    mask: Optional[str] = attrs.field(default=None, validator=_mask_spec)
    ca_bundle: Optional[str] = attrs.field(default=None, validator=_ca_bundle)
    debug: bool = attrs.field(default=_env("debug"), validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.unavailable_after < self.degraded_after:
            raise ConfigError("must be at least degraded_after", key="unavailable_after")
        if self.max_item_bytes > self.max_request_bytes:
            raise ConfigError("must not exceed max_request_bytes", key="max_item_bytes")
        # Swapped keys would also put the secret where the public key is shown (reprs, logs).
        for key, value, own, other in (("public_key", self.public_key, "pk-lf-", "sk-lf-"),
                                       ("secret_key", self.secret_key, "sk-lf-", "pk-lf-")):
            if value.startswith(other):
                raise ConfigError(f"starts with {other}, as the other key does: public_key and secret_key look "
                                  f"swapped ({key} starts with {own})", key=key)

    @property
    def timeout(self) -> "tuple[float, float]":
        return (self.connect_timeout, self.read_timeout)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], env: Optional[Mapping[str, str]] = None, *, stream: Optional[str] = None
    ) -> "LangfuseConfig":
        """Build from a TOML `params` table; errors name the stream and the key, never a secret."""
        env = os.environ if env is None else env
        names = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(names))})", stream=stream, key=unknown[0])
        values = dict(params)
        for key in ENV:
            if values.get(key) in (None, ""):  # (an empty key in params counts as unset, as in the environment)
                try:
                    values[key] = from_env(key, env)
                except ConfigError as exc:
                    raise ConfigError(exc.problem, stream=stream, key=key) from None
            if values[key] is None and key in ("host", "public_key", "secret_key"):
                raise ConfigError(_required(key, "in params"), stream=stream, key=key)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(exc.problem, stream=stream, key=exc.key) from None
        except (TypeError, ValueError) as exc:  # attrs' own checks; their text has no secret
            raise ConfigError(str(exc), stream=stream) from None
