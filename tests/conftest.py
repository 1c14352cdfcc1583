"""Fixtures: the real Langfuse OpenAPI spec as a validator, a loopback receiver, secret checks."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from dirigent_langfuse.receiver.server import Receiver

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("DIRIGENT_LANGFUSE_REFERENCE", ROOT.parent / "shared" / "reference"))
OPENAPI = REFERENCE / "langfuse-openapi.yml"
OTEL_ATTRIBUTES = REFERENCE / "langfuse-otel-attributes.json"
ACP_SCHEMA = REFERENCE / "acp-schema.json"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: `nullable: true` becomes `anyOf [schema, null]`, recursively."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="session")
def openapi() -> Dict[str, Any]:
    if not OPENAPI.exists():
        pytest.skip(f"Langfuse's OpenAPI spec is not at {OPENAPI} (set DIRIGENT_LANGFUSE_REFERENCE); CI always has it")
    yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read the OpenAPI spec")
    return yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def validate_item(openapi: Dict[str, Any]) -> Callable[[Dict[str, Any]], None]:
    """Raises jsonschema.ValidationError unless the item is a valid `IngestionEvent`."""
    jsonschema = pytest.importorskip("jsonschema")
    schemas = _nullable(copy.deepcopy(openapi["components"]["schemas"]))
    root = {"components": {"schemas": schemas}, "$ref": "#/components/schemas/IngestionEvent"}
    validator = jsonschema.Draft4Validator(root)

    def check(item: Dict[str, Any]) -> None:
        errors = sorted(validator.iter_errors(item), key=lambda e: e.path)
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            raise AssertionError(f"{item.get('type')} item is not a valid IngestionEvent: {best.message} at {list(best.path)}")

    return check


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def receiver_v4() -> Iterator[Receiver]:
    with Receiver(version="4.2.0") as r:
        yield r


SECRETS = ("sk-lf-local", "c2stbGYtbG9jYWw", "cGstbGYtbG9jYWw6c2stbGYtbG9jYWw", "sk-secret-value", "Basic ")


@pytest.fixture
def no_secrets_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test when any log line (any level) carries a secret or an Authorization header."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in SECRETS:
            assert secret not in text, f"secret-like text {secret[:6]}... logged by {record.name}"


# -- the fault suite's table -----------------------------------------------------------------------

FAULT_TABLE: List[Dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One table for the fault suite: scenario, accepted, delivered, dropped, duplicates, max block."""
    if not FAULT_TABLE:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault suite")
    head = (f"{'scenario':<28} {'transport':<10} {'accepted':>8} {'delivered':>9} {'duplicates':>10} {'resent':>6} "
            f"{'max block ms':>12}  dropped (by reason)")
    write(head)
    write("-" * len(head))
    for row in FAULT_TABLE:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(row["dropped"].items())) or "-"
        write(f"{row['scenario']:<28} {row['transport']:<10} {row['accepted']:>8} {row['delivered']:>9} "
              f"{row['duplicates']:>10} {row['resent']:>6} {row['max_block_ms']:>12.2f}  {dropped}")
