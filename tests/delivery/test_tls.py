"""https:// against the receiver with a self-signed certificate: `ca_bundle` trusts it; without
it the certificate is refused, nothing counts as delivered, and no secret is logged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from dirigent_langfuse import ConfigError, LangfuseConfig, LangfuseStream, OutcomeStatus
from dirigent_langfuse.receiver.server import Receiver

from ..helpers import completed, config, created, ended, started

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_receiver(certificate: Tuple[str, str]) -> Iterator[Receiver]:
    with Receiver(tls=certificate) as receiver:
        yield receiver


def session(scroll: str) -> list:
    return [created(scroll, t=0), started("m1", scroll, t=1), completed("m1", scroll, t=2), ended(scroll, t=3)]


@pytest.mark.parametrize("transport", ["ingestion", "otel"])
def test_a_private_ca_is_trusted_through_ca_bundle(tls_receiver, certificate, transport, no_secrets_logged):
    assert tls_receiver.url.startswith("https://")
    stream = LangfuseStream(config(tls_receiver.url, transport=transport, ca_bundle=certificate[0]))
    for event in session("s-tls"):
        stream.on_event(event)
    assert stream.shutdown(10).status is OutcomeStatus.DELIVERED
    assert len(tls_receiver.store.traces()) == 1


def test_without_it_the_certificate_is_refused_and_nothing_counts_as_delivered(tls_receiver, no_secrets_logged):
    stream = LangfuseStream(config(tls_receiver.url, max_retries=0, retry_backoff_max=0.05))
    for event in session("s-untrusted"):
        stream.on_event(event)
    outcome = stream.shutdown(1)
    stats = stream.stats()
    assert not outcome.ok and stats.items_delivered == 0
    assert "SSLError" in (stats.last_error or "")
    assert tls_receiver.store.traces() == []


def test_a_ca_bundle_that_does_not_exist_is_a_config_error_naming_it(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        LangfuseConfig(host="https://x", public_key="pk", secret_key="sk", ca_bundle=str(tmp_path / "none.pem"))
    assert info.value.key == "ca_bundle" and "none.pem" in str(info.value)


def test_receive_wants_the_certificate_and_its_key_together(certificate, tmp_path):
    import sys

    base = [sys.executable, "-m", "dirigent_langfuse", "receive", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "r.db")]
    alone = subprocess.run(base + ["--tls-cert", certificate[0]], capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "go together" in alone.stderr
    wrong = subprocess.run(base + ["--tls-cert", certificate[0], "--tls-key", str(tmp_path / "missing.pem")],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "cannot load the TLS certificate" in wrong.stderr
