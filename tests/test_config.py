"""LangfuseConfig reads Langfuse's SDK environment variables itself; explicit arguments win."""

from __future__ import annotations

import logging

import pytest

from dirigent_langfuse import ConfigError, LangfuseConfig, LangfuseStream, StreamOutcome
from dirigent_langfuse.config import ENV

from .helpers import created

ALL = sorted({var for spec in ENV.values() for var in spec.variables})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ALL:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANGFUSE_HOST", "https://old.example.com")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-env")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-env-secret")
    return monkeypatch


def test_the_constructor_reads_the_sdks_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("LANGFUSE_BASE_URL", "https://eu.cloud.langfuse.com/")
    for var, text in {"LANGFUSE_SAMPLE_RATE": "0.25", "LANGFUSE_TRACING_ENVIRONMENT": "staging",
                      "LANGFUSE_RELEASE": "v9", "LANGFUSE_FLUSH_AT": "15", "LANGFUSE_FLUSH_INTERVAL": "0.5",
                      "LANGFUSE_TIMEOUT": "3", "LANGFUSE_DEBUG": "True"}.items():
        env.setenv(var, text)
    config = LangfuseConfig()
    assert config.host == "https://eu.cloud.langfuse.com"  # LANGFUSE_BASE_URL before LANGFUSE_HOST
    assert config.public_key == "pk-lf-env"
    read = config.secret_key == "sk-lf-env-secret"
    assert read, "secret_key was not read from LANGFUSE_SECRET_KEY"  # (never shown: a failure would print it)
    assert config.sample_rate == 0.25 and config.environment == "staging" and config.release == "v9"
    assert config.batch_size == 15 and config.flush_interval == 0.5
    assert config.connect_timeout == 3.0 and config.read_timeout == 3.0 and config.debug is True
    assert "sk-lf-env-secret" not in repr(config)


def test_explicit_arguments_win(env: pytest.MonkeyPatch) -> None:
    env.setenv("LANGFUSE_FLUSH_AT", "15")
    env.setenv("LANGFUSE_TRACING_ENABLED", "false")
    config = LangfuseConfig(host="http://h", public_key="pk-lf-mine", batch_size=32, tracing_enabled=True)
    assert (config.host, config.public_key) == ("http://h", "pk-lf-mine")
    read = config.secret_key == "sk-lf-env-secret"
    assert read, "secret_key was not read from LANGFUSE_SECRET_KEY"
    assert config.batch_size == 32 and config.tracing_enabled is True


def test_without_variables_the_defaults_stand(env: pytest.MonkeyPatch) -> None:
    config = LangfuseConfig()
    assert config.host == "https://old.example.com"
    assert (config.batch_size, config.flush_interval, config.connect_timeout, config.read_timeout) == (32, 1.0, 5.0, 10.0)
    assert config.tracing_enabled is True and config.debug is False and config.sample_rate == 1.0


@pytest.mark.parametrize("missing, variables", [
    ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_PUBLIC_KEY"),
    ("LANGFUSE_SECRET_KEY", "LANGFUSE_SECRET_KEY"),
    ("LANGFUSE_HOST", "LANGFUSE_BASE_URL or LANGFUSE_HOST"),
])
def test_a_missing_host_or_key_names_the_field_and_the_variable(env: pytest.MonkeyPatch, missing: str, variables: str) -> None:
    env.delenv(missing)
    with pytest.raises(ConfigError) as info:
        LangfuseConfig()
    field = {"LANGFUSE_PUBLIC_KEY": "public_key", "LANGFUSE_SECRET_KEY": "secret_key", "LANGFUSE_HOST": "host"}[missing]
    assert info.value.key == field and variables in str(info.value)
    assert "sk-lf-env-secret" not in str(info.value)


@pytest.mark.parametrize("var, field", [("LANGFUSE_FLUSH_AT", "batch_size"), ("LANGFUSE_TIMEOUT", "connect_timeout"),
                                        ("LANGFUSE_DEBUG", "debug"), ("LANGFUSE_FLUSH_INTERVAL", "flush_interval")])
def test_a_variable_that_does_not_read_names_the_field_and_the_variable(env: pytest.MonkeyPatch, var: str, field: str) -> None:
    env.setenv(var, "soon")
    with pytest.raises(ConfigError) as info:
        LangfuseConfig()
    assert info.value.key == field and var in str(info.value)


def test_a_value_the_field_refuses_is_a_config_error(env: pytest.MonkeyPatch) -> None:
    env.setenv("LANGFUSE_FLUSH_AT", "0")
    with pytest.raises(ConfigError) as info:
        LangfuseConfig()
    assert info.value.key == "batch_size"


def test_the_kill_switch_sends_nothing(env: pytest.MonkeyPatch) -> None:
    env.setenv("LANGFUSE_TRACING_ENABLED", "false")
    stream = LangfuseStream(LangfuseConfig(atexit_flush=False))
    outcome = stream.on_event(created())
    assert outcome == StreamOutcome.skipped("tracing is disabled (tracing_enabled = false)")
    assert stream.stats().items_accepted == 0
    stream.shutdown(1)


def test_debug_turns_on_the_packages_debug_log(env: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("dirigent_langfuse")
    before = logger.level
    env.setenv("LANGFUSE_DEBUG", "true")
    try:
        stream = LangfuseStream(LangfuseConfig(atexit_flush=False, tracing_enabled=False))
        assert logger.level == logging.DEBUG
        stream.shutdown(1)
    finally:
        logger.setLevel(before)


def test_from_params_reads_the_environment_it_is_given(env: pytest.MonkeyPatch) -> None:
    env.setenv("LANGFUSE_FLUSH_AT", "15")  # the process's: not read when another environment is given
    config = LangfuseConfig.from_params({"host": "http://h", "public_key": "pk", "secret_key": "sk"},
                                        env={"LANGFUSE_TIMEOUT": "2"})
    assert config.batch_size == 32 and config.read_timeout == 2.0
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({"public_key": "pk", "secret_key": "sk"}, env={}, stream="s")
    assert info.value.key == "host" and info.value.stream == "s" and "LANGFUSE_BASE_URL" in str(info.value)
