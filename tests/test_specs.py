import pytest

from dirigent_langfuse import ConfigError, LangfuseConfig, StreamScope, load_stream_specs

SEED_EXAMPLE = '''
[[streams]]
name = "langfuse-prod"
type = "langfuse"
enabled = true

[streams.scope]
kind = "connector"
connector_uid = "01985d00-..."

[streams.params]
host = "https://langfuse.example.com"
public_key = "pk-lf-..."
secret_key = "sk-secret-value"
'''


def test_seed_example_parses(tmp_path):
    path = tmp_path / "streams.toml"
    path.write_text(SEED_EXAMPLE)
    for source in (SEED_EXAMPLE, str(path), path):
        (spec,) = load_stream_specs(source)
        assert spec.name == "langfuse-prod" and spec.type == "langfuse" and spec.enabled
        assert spec.scope == StreamScope(kind="connector", connector_uid="01985d00-...")
        config = LangfuseConfig.from_params(spec.params, env={})
        assert config.host == "https://langfuse.example.com"
        assert config.batch_size == 32 and config.max_retries == 3 and config.transport == "auto"
        assert "sk-secret-value" not in repr(spec) and "sk-secret-value" not in repr(config)


def test_a_path_loads_as_a_path_whatever_it_holds_and_text_has_its_own_way_in(tmp_path, monkeypatch):
    """"team=a.toml" was read as TOML text (any string with "=" was), and failed as such."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "team=a.toml").write_text(SEED_EXAMPLE)
    (spec,) = load_stream_specs("team=a.toml")
    assert spec.name == "langfuse-prod"
    with pytest.raises(ConfigError) as info:
        load_stream_specs("streams = 3")  # no such file: said as one, not read as TOML
    assert "cannot read streams = 3" in str(info.value)
    (spec,) = load_stream_specs(text='[[streams]]\nname = "a"\ntype = "langfuse"\n')
    assert spec.name == "a"
    with pytest.raises(ConfigError) as info:
        load_stream_specs(text="streams = 3")
    assert info.value.key == "streams"
    with pytest.raises(TypeError):
        load_stream_specs("x.toml", text="streams = []")
    with pytest.raises(TypeError):
        load_stream_specs()


def test_defaults_scope_all_and_enabled():
    (spec,) = load_stream_specs('[[streams]]\nname = "a"\ntype = "langfuse"\n')
    assert spec.enabled and spec.scope.kind == "all" and spec.params == {}


BAD = [
    ('[[streams]]\ntype = "langfuse"\n', None, "name"),
    ('[[streams]]\nname = "a"\n', "a", "type"),
    ('[[streams]]\nname = "a"\ntype = "langfuse"\nenabled = "yes"\n', "a", "enabled"),
    ('[[streams]]\nname = "a"\ntype = "langfuse"\n[streams.scope]\nkind = "connector"\n', "a", "scope.connector_uid"),
    ('[[streams]]\nname = "a"\ntype = "langfuse"\n[streams.scope]\nkind = "everything"\n', "a", "scope.kind"),
    ('[[streams]]\nname = "a"\ntype = "langfuse"\nparms = {}\n', "a", "parms"),
    ('[[streams]]\nname = "a"\ntype = "x"\n[[streams]]\nname = "a"\ntype = "y"\n', "a", "name"),
    ('streams = 3\n', None, "streams"),
    ('\nstreams = 3', None, "streams"),
]


@pytest.mark.parametrize("text, stream, key", BAD)
def test_bad_configs_name_stream_and_key(text, stream, key):
    with pytest.raises(ConfigError) as info:
        load_stream_specs(text)
    assert info.value.key == key
    assert info.value.stream == stream
    assert key in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_stream_specs('[[streams]]\nname = "a\nsecret_key = "sk-secret-value"\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_stream_specs(str(tmp_path / "missing.toml"))


def test_a_toml_file_that_is_not_utf8_is_a_config_error_and_a_bom_is_skipped(tmp_path):
    """Before, a latin-1 file raised UnicodeDecodeError (a traceback from `check` and `mirror`), and
    a file saved with a byte order mark was "not valid TOML" at line 1, column 1."""
    entry = '[[streams]]\nname = "caf\u00e9"\ntype = "langfuse"\n[streams.params]\nhost = "http://x"\n'
    latin = tmp_path / "latin.toml"
    latin.write_bytes(entry.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_stream_specs(str(latin))
    assert str(info.value) == f"cannot read {latin}: not UTF-8 text, as TOML must be (byte 0xe9 at offset 23)"
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + entry.encode("utf-8"))
    assert [s.name for s in load_stream_specs(str(bom))] == ["caf\u00e9"]


@pytest.mark.parametrize(
    "params, key",
    [
        ({"public_key": "pk", "secret_key": "sk-secret-value"}, "host"),
        ({"host": "ftp://x", "public_key": "pk", "secret_key": "sk-secret-value"}, "host"),
        ({"host": "https://x", "secret_key": "sk-secret-value"}, "public_key"),
        ({"host": "https://x", "public_key": "pk"}, "secret_key"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "batch_size": 0}, "batch_size"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "transport": "grpc"}, "transport"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "flush_interval": -1}, "flush_interval"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "bogus": 1}, "bogus"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "late_bind_buffer": "no"},
         "late_bind_buffer"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "spool_path": ""}, "spool_path"),
        ({"host": "https://x", "public_key": "pk", "secret_key": "sk-secret-value", "max_item_bytes": 10**9},
         "max_item_bytes"),
    ],
)
def test_bad_params_fail_clearly_without_the_secret(params, key):
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params(params, env={}, stream="prod")
    assert info.value.key == key and info.value.stream == "prod"
    assert "sk-secret-value" not in str(info.value)


def test_environment_fallbacks():
    env = {"LANGFUSE_HOST": "https://cloud.langfuse.com/", "LANGFUSE_PUBLIC_KEY": "pk-env",
           "LANGFUSE_SECRET_KEY": "sk-secret-value"}
    config = LangfuseConfig.from_params({}, env=env)
    assert config.host == "https://cloud.langfuse.com" and config.public_key == "pk-env"
    assert LangfuseConfig.from_params({"public_key": "pk-param"}, env=env).public_key == "pk-param"
    assert "sk-secret-value" not in repr(config)
    # what Langfuse's UI writes in the .env it offers; it wins over the older LANGFUSE_HOST
    both = dict(env, LANGFUSE_BASE_URL="https://eu.cloud.langfuse.com")
    assert LangfuseConfig.from_params({}, env=both).host == "https://eu.cloud.langfuse.com"
    assert LangfuseConfig.from_params({}, env=dict(both, LANGFUSE_BASE_URL="")).host == "https://cloud.langfuse.com"
    assert LangfuseConfig.from_params({"host": "http://h"}, env=both).host == "http://h"
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({}, env={"LANGFUSE_PUBLIC_KEY": "p", "LANGFUSE_SECRET_KEY": "s"})
    assert info.value.key == "host" and "LANGFUSE_BASE_URL or LANGFUSE_HOST" in str(info.value)


@pytest.mark.parametrize("value", ["Production", "langfuse-ci", "a b", "", "x" * 41, "staging/eu"])
def test_an_environment_langfuse_would_refuse_is_a_config_error(value):
    # Langfuse refuses an environment outside ^(?!langfuse)[a-z0-9-_]+$ (at most 40): every span lost
    with pytest.raises(ConfigError) as info:
        LangfuseConfig(host="http://h", public_key="p", secret_key="s", environment=value)
    assert info.value.key == "environment" and "lower-case" in str(info.value)
    assert LangfuseConfig(host="http://h", public_key="p", secret_key="s", environment="prod-eu_2").environment == "prod-eu_2"


def test_environment_and_release_fall_back_to_the_sdks_variables():
    env = {"LANGFUSE_BASE_URL": "http://h", "LANGFUSE_PUBLIC_KEY": "p", "LANGFUSE_SECRET_KEY": "s",
           "LANGFUSE_TRACING_ENVIRONMENT": "staging", "LANGFUSE_RELEASE": "v9"}
    config = LangfuseConfig.from_params({}, env=env)
    assert (config.environment, config.release) == ("staging", "v9")
    assert LangfuseConfig.from_params({"environment": "prod"}, env=env).environment == "prod"
    assert LangfuseConfig.from_params({}, env=dict(env, LANGFUSE_TRACING_ENVIRONMENT="")).environment is None
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({}, env=dict(env, LANGFUSE_TRACING_ENVIRONMENT="Prod"), stream="s1")
    assert info.value.key == "environment" and info.value.stream == "s1"


@pytest.mark.parametrize("public, secret, wrong", [("sk-lf-secret-value", "pk-lf-1", "public_key"),
                                                    ("sk-lf-secret-value", "x", "public_key"),
                                                    ("pk-x", "pk-lf-1", "secret_key")])
def test_swapped_keys_are_a_config_error_that_never_shows_the_secret(public, secret, wrong):
    with pytest.raises(ConfigError) as info:
        LangfuseConfig(host="http://h", public_key=public, secret_key=secret)
    assert info.value.key == wrong and "swapped" in str(info.value)
    assert str(info.value).startswith(f"key {wrong!r}: starts with ")  # a sentence, naming the key that is wrong
    assert "secret-value" not in str(info.value) and "secret-value" not in repr(info.value)
    LangfuseConfig(host="http://h", public_key="pk-lf-1", secret_key="sk-lf-2")  # the usual pair is fine


def test_transport_param_accepted():
    config = LangfuseConfig.from_params({"host": "http://h", "public_key": "p", "secret_key": "s", "transport": "otel"}, env={})
    assert config.transport == "otel"


def test_keys_lose_the_whitespace_around_them():
    """A key read from a file or a Kubernetes secret ends in a newline; before, it was sent as
    it was and Langfuse answered 401 to every request."""
    config = LangfuseConfig.from_params({"host": "http://h", "public_key": " pk-lf-1\n"},
                                        env={"LANGFUSE_SECRET_KEY": "sk-lf-secret-value\n"})
    assert (config.public_key, config.secret_key) == ("pk-lf-1", "sk-lf-secret-value")


@pytest.mark.parametrize("key", ["public_key", "secret_key"])
@pytest.mark.parametrize("value, problem", [("“sk-lf-secret-value”", "U+201C at position 1"),
                                            ("sk-lf-secret value", "a space or a control character at position 13"),
                                            ("sk-lf-secret-välue", "U+00E4 at position 15")])
def test_a_key_with_a_character_no_key_has_is_a_config_error_that_shows_no_secret(key, value, problem):
    """Before: a quote copied with the key raised UnicodeEncodeError from deep inside requests when
    the stream was made; a space inside made every request a 401."""
    params = {"host": "http://h", "public_key": "pk-lf-1", "secret_key": "sk-lf-2"}
    params[key] = value.replace("sk-lf", "pk-lf") if key == "public_key" else value
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params(params, env={}, stream="s")
    assert info.value.key == key and problem in str(info.value)
    assert "secret" not in str(info.value).replace("secret_key", "")


@pytest.mark.parametrize("host, problem", [
    ("https://admin:hunter2@lf.example.com", "must not carry a user name or password"),
    ("https://hunter2@lf.example.com/langfuse", "must not carry a user name or password"),
    ("ftp://admin:hunter2@lf.example.com", "must not carry a user name or password"),
    ("https://lf.example.com/?project=1", "without a query"),
    ("https://lf.example.com/#top", "without a query, a fragment"),
    ("https://lf.example .com", "spaces"),
    ("https://lf.example.com:44x", "not a URL"),
    ("https://", "http:// or https:// URL"),
    # an endpoint for the base URL (as OTel exporters are set up): every request was a 404, all dropped
    ("https://cloud.langfuse.com/api/public/otel", "API endpoint ('https://cloud.langfuse.com/api/public/otel'); "
     "give Langfuse's base URL, the one its web UI is served at: 'https://cloud.langfuse.com'"),
    ("http://lf.example.com:3000/langfuse/api/public/ingestion/", "base URL, the one its web UI is served at: "
     "'http://lf.example.com:3000/langfuse'"),
    ("https://admin:hunter2@lf.example.com/api/public/otel/v1/traces", "must not carry a user name or password"),
])
def test_a_host_that_cannot_work_is_a_config_error_that_never_shows_a_password(host, problem):
    with pytest.raises(ConfigError) as info:
        LangfuseConfig(host=host, public_key="pk-lf-1", secret_key="sk-lf-2")
    assert info.value.key == "host" and problem in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_host_with_a_path_keeps_it():
    config = LangfuseConfig(host=" https://example.com/langfuse/ ", public_key="pk-lf-1", secret_key="sk-lf-2")
    assert config.host == "https://example.com/langfuse"


FLOATS = [f.name for f in __import__("attrs").fields(LangfuseConfig)
          if f.type in ("float", float) and f.name != "sample_rate"]


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10 ** 400, 10 ** 5000], ids=["nan", "inf", "1e400", "1e5000"])
def test_a_duration_of_nan_or_inf_is_a_config_error(name, value):
    """TOML has `nan` and `inf`. Before, both passed: a flush_interval of nan made the worker
    wait nan seconds (ValueError in its thread), a fork_wait of inf raised OverflowError in the
    fork hook, a shutdown_timeout of inf could hold the exit for ever."""
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({"host": "http://h", "public_key": "pk", "secret_key": "sk", name: value}, env={})
    assert info.value.key == name and "finite" in str(info.value)
    # (an int past a float's range raised OverflowError, and one past 4,300 digits ValueError
    # while the error was written: neither named the key)
    assert len(str(info.value)) < 200


def test_a_sample_rate_past_a_float_s_range_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        LangfuseConfig.from_params({"host": "http://h", "public_key": "pk", "secret_key": "sk", "sample_rate": 10 ** 400},
                                   env={})
    assert info.value.key == "sample_rate"
