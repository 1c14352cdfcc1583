"""Stream configuration: the TOML `[[streams]]` array of the seed, read into `StreamSpec`s.

Errors are `ConfigError`s that name the stream and the key. Values of secret keys are never
echoed, whatever is wrong with them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, List, Mapping, Optional, Union

import attrs

from .bus import BusEvent
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = ["StreamScope", "StreamSpec", "load_stream_specs", "SECRET_KEYS"]

SECRET_KEYS = frozenset({"secret_key", "password", "token", "api_key"})
_SCOPE_KINDS = ("all", "connector")


@attrs.frozen(kw_only=True)
class StreamScope:
    """Which events a stream sees: `all`, or one connector's (`connector_uid`)."""

    kind: str = attrs.field(default="all", validator=attrs.validators.in_(_SCOPE_KINDS))
    connector_uid: Optional[str] = None

    def __attrs_post_init__(self) -> None:
        if self.kind == "connector" and not self.connector_uid:
            raise ConfigError("scope kind 'connector' needs a connector_uid", key="scope.connector_uid")

    def matches(self, event: BusEvent) -> bool:
        return self.kind == "all" or event.connector_id == self.connector_uid


def _redacted(params: Mapping[str, Any]) -> str:
    return repr({k: ("***" if k in SECRET_KEYS else v) for k, v in params.items()})


@attrs.frozen(kw_only=True)
class StreamSpec:
    """One `[[streams]]` entry. `params` is the stream type's own table (secrets redacted in repr)."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    type: str = attrs.field(validator=attrs.validators.instance_of(str))
    enabled: bool = True
    scope: StreamScope = attrs.field(factory=StreamScope)
    params: Mapping[str, Any] = attrs.field(factory=dict, repr=_redacted)


def _table(value: Any, stream: str, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a table, got {type(value).__name__}", stream=stream, key=key)
    return value


def _spec(entry: Any, index: int, seen: "set[str]") -> StreamSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"[[streams]] entry {index} must be a table", key="streams")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"[[streams]] entry {index} needs a non-empty string", key="name")
    if name in seen:
        raise ConfigError("name is used by two streams", stream=name, key="name")
    seen.add(name)
    unknown = set(entry) - {"name", "type", "kind", "enabled", "scope", "params"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}", stream=name, key=sorted(unknown)[0])
    type_ = entry.get("type", entry.get("kind"))
    if not isinstance(type_, str) or not type_:
        raise ConfigError("needs a string 'type' (for example \"langfuse\")", stream=name, key="type")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("must be true or false", stream=name, key="enabled")
    scope_table = dict(_table(entry.get("scope"), name, "scope"))
    extra = set(scope_table) - {"kind", "connector_uid"}
    if extra:
        raise ConfigError(f"unknown keys {sorted(extra)}", stream=name, key="scope." + sorted(extra)[0])
    kind = scope_table.get("kind", "all")
    if kind not in _SCOPE_KINDS:
        raise ConfigError(f"must be one of {list(_SCOPE_KINDS)}, got {kind!r}", stream=name, key="scope.kind")
    try:
        scope = StreamScope(kind=kind, connector_uid=scope_table.get("connector_uid"))
    except ConfigError as exc:
        raise ConfigError(exc.problem, stream=name, key=exc.key) from None
    params = dict(_table(entry.get("params"), name, "params"))
    return StreamSpec(name=name, type=type_, enabled=enabled, scope=scope, params=params)


def load_stream_specs(
    source: Union[str, "os.PathLike[str]", Mapping[str, Any], None] = None, *, text: Optional[str] = None
) -> List[StreamSpec]:
    """Read `[[streams]]` from a TOML file (`source`, a path), TOML text (`text=`), or an already
    parsed mapping (`source`).

    A string `source` is a path, whatever it holds (`"team=a.toml"` is a file name), with one
    exception kept for the callers that passed TOML text before `text=` existed: a string with a
    line break, which no file name of a config has, is read as TOML text."""
    if (source is None) == (text is None):
        raise TypeError("load_stream_specs takes a path or a mapping, or text=, and not both")
    if isinstance(source, Mapping):
        document: Mapping[str, Any] = source
    else:
        if text is None and isinstance(source, str) and "\n" in source:
            text = source
        elif text is None:
            path = Path(source)  # type: ignore[arg-type]
            try:
                text = path.read_text(encoding="utf-8-sig")  # TOML is UTF-8; a byte order mark (Notepad's) is skipped
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
            except UnicodeDecodeError as exc:
                raise ConfigError(f"cannot read {path}: not UTF-8 text, as TOML must be (byte 0x{exc.object[exc.start]:02x} "
                                  f"at offset {exc.start})") from None
        elif not isinstance(text, str):
            raise TypeError(f"text= must be TOML text (a str), got {type(text).__name__}")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # The decoder's message names a line and column, never a value.
            raise ConfigError(f"not valid TOML: {exc}") from None
    streams = document.get("streams", [])
    if not isinstance(streams, list):
        raise ConfigError("must be an array of tables ([[streams]])", key="streams")
    seen: "set[str]" = set()
    return [_spec(entry, i, seen) for i, entry in enumerate(streams)]
