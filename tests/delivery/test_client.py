"""The HTTP client and its retry policy, with `responses` (no sockets)."""

import json

import pytest
import requests
import responses
from urllib3.response import HTTPResponse

from dirigent_langfuse import LangfuseClient, LangfuseConfig, LangfuseStatusError, LangfuseTransportError
from dirigent_langfuse.delivery.client import USER_AGENT, make_retry

HOST = "http://lf.test"
URL = HOST + "/api/public/ingestion"


def make(**kw):
    return LangfuseClient(LangfuseConfig(host=HOST, public_key="pk-lf-1", secret_key="sk-secret-value", **kw))


def ok_207(request):
    batch = json.loads(request.body)["batch"]
    return 207, {}, json.dumps({"successes": [{"id": i["id"], "status": 201} for i in batch], "errors": []})


@responses.activate
def test_send_posts_batch_with_basic_auth_user_agent_and_timeouts():
    responses.add_callback("POST", URL, callback=ok_207)
    client = make()
    result = client.send([{"id": "e1", "type": "trace-create", "timestamp": "t", "body": {"id": "s"}}])
    (call,) = responses.calls
    assert call.request.headers["Authorization"].startswith("Basic ")
    assert call.request.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("dirigent-langfuse/")
    assert json.loads(call.request.body)["batch"][0]["id"] == "e1"
    assert result.status == 207 and result.successes == ("e1",) and result.errors == ()
    assert client.config.timeout == (5.0, 10.0)


@responses.activate
def test_207_errors_are_parsed_per_item():
    responses.add("POST", URL, status=207, json={
        "successes": [{"id": "a", "status": 201}],
        "errors": [{"id": "b", "status": 400, "message": "Invalid request data", "error": "bad"},
                   {"id": "c", "status": 500, "message": None, "error": {"detail": "db"}}],
    })
    result = make().send([])
    assert result.successes == ("a",)
    assert [(e.id, e.status, e.retryable) for e in result.errors] == [("b", 400, False), ("c", 500, True)]
    # Langfuse's `error` says why (v4's refusal of legacy events says what to do): kept with the message
    assert result.errors[0].message == "Invalid request data: bad"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
@responses.activate
def test_4xx_raises_status_error_without_retry(status):
    responses.add("POST", URL, status=status, json={"message": "nope"})
    with pytest.raises(LangfuseStatusError) as info:
        make().send([])
    assert info.value.status == status and info.value.message == "nope" and not info.value.retryable
    assert len(responses.calls) == 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("path", ["/api/public/ingestion", "/api/public/otel/v1/traces"])
@responses.activate
def test_a_redirect_is_an_error_naming_where_it_points_never_a_success(status, path):
    # http:// to https:// in front of Langfuse: nothing was ingested, so nothing may count as delivered
    responses.add("POST", HOST + path, status=status, headers={"Location": "https://lf.test" + path}, body="")
    client = make()
    with pytest.raises(LangfuseStatusError) as info:
        client.send([]) if "ingestion" in path else client.send_otlp(b'{"resourceSpans":[]}')
    assert info.value.status == status and not info.value.retryable
    assert info.value.message == f"redirected to https://lf.test{path}; set host to https://lf.test"
    assert len(responses.calls) == 1  # not followed: a POST's body and credentials stay here


@responses.activate
def test_a_load_balancers_sticky_cookie_is_sent_back():
    responses.add("POST", URL, status=207, json={"successes": [], "errors": []},
                  headers={"Set-Cookie": "AWSALB=node-7; Path=/"})
    responses.add("POST", URL, status=207, json={"successes": [], "errors": []})
    client = make()
    client.send([])
    client.send([])
    assert "Cookie" not in responses.calls[0].request.headers
    assert responses.calls[1].request.headers["Cookie"] == "AWSALB=node-7"


@responses.activate
def test_5xx_retried_three_times_then_status_error():
    for _ in range(4):
        responses.add("POST", URL, status=503, json={"message": "down"})
    with pytest.raises(LangfuseStatusError) as info:
        make().send([])
    assert info.value.status == 503 and info.value.retryable
    assert len(responses.calls) == 4  # the first try and 3 retries


@responses.activate
def test_5xx_then_success():
    responses.add("POST", URL, status=502)
    responses.add("POST", URL, status=500)
    responses.add_callback("POST", URL, callback=ok_207)
    assert make().send([]).status == 207
    assert len(responses.calls) == 3


@responses.activate
def test_proxy_html_502_never_crashes_the_client():
    html = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
    for _ in range(4):
        responses.add("POST", URL, status=502, body=html, content_type="text/html")
    with pytest.raises(LangfuseStatusError) as info:
        make().send([])
    assert info.value.status == 502 and "502 Bad Gateway" in info.value.message and "<" not in info.value.message


@responses.activate
def test_a_2xx_that_is_not_langfuse_s_answer_is_an_error_never_a_delivery():
    """A sign-in proxy, a captive portal or a web server answering for the host: 200 with a page.
    Counting that as delivered would lose the items without a word."""
    responses.add("POST", URL, status=200, body="<html><body>Please sign in</body></html>", content_type="text/html")
    responses.add("POST", URL, status=207, body="not json at all")
    responses.add("POST", URL, status=200, json={"ok": True})
    for _ in range(3):
        with pytest.raises(LangfuseTransportError) as info:
            make().send([])
        assert "not Langfuse's answer" in str(info.value) and "is host" in str(info.value)
    responses.add("POST", URL, status=207, json={"successes": "?", "errors": [{"no": "id"}, 5]})
    assert make().send([]).errors == ()  # Langfuse's answer, oddly filled: tolerated
    # ...also with lists that are not lists and statuses that are no numbers (before: TypeError,
    # and OverflowError or ValueError for an infinite or NaN status, out of the worker's send)
    responses.add("POST", URL, status=207, json={"successes": 5, "errors": {"id": "x"}})
    assert make().send([]).errors == ()
    responses.add("POST", URL, status=207, body='{"successes": [], "errors": [{"id": "a", "status": Infinity},'
                                                 ' {"id": "b", "status": NaN}, {"id": "c", "status": "400"}]}')
    assert [(e.id, e.status) for e in make().send([]).errors] == [("a", 500), ("b", 500), ("c", 500)]


@responses.activate
def test_over_otel_an_empty_answer_is_fine_and_a_page_is_an_error():
    otel = URL.replace("/api/public/ingestion", "/api/public/otel/v1/traces")
    responses.add("POST", otel, status=200, body=b"")
    assert make().send_otlp(b'{"resourceSpans":[]}').rejected == 0
    responses.add("POST", otel, status=200, body="<html>Sign in</html>", content_type="text/html")
    with pytest.raises(LangfuseTransportError) as info:
        make().send_otlp(b'{"resourceSpans":[]}')
    assert "text/html" in str(info.value) and "Sign in" in str(info.value)


@responses.activate
def test_connection_errors_become_transport_errors_without_secrets():
    responses.add("POST", URL, body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(LangfuseTransportError) as info:
        make().send([])
    assert "sk-secret-value" not in str(info.value) and "Authorization" not in str(info.value)


@responses.activate
def test_an_os_error_that_is_not_requests_own_is_a_transport_error_too():
    """requests raises a bare OSError for a CA bundle it cannot find; the worker counted each such
    batch as a bug of ours (internal_error, a traceback each), with health HEALTHY."""
    responses.add("POST", URL, body=OSError("Could not find a suitable TLS CA certificate bundle, invalid path: /x"))
    with pytest.raises(LangfuseTransportError) as info:
        make().send([])
    assert "invalid path: /x" in str(info.value)


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_from_the_environment_that_does_not_exist_is_a_config_error_naming_it(variable, monkeypatch, tmp_path):
    from dirigent_langfuse import ConfigError, LangfuseStream

    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "gone.pem")
    monkeypatch.setenv(variable, missing)
    https = dict(host="https://lf.test", public_key="pk-lf-1", secret_key="sk-secret-value", atexit_flush=False)
    with pytest.raises(ConfigError) as info:
        LangfuseClient(LangfuseConfig(**https))
    assert info.value.key == "ca_bundle" and variable in str(info.value) and missing in str(info.value)
    with pytest.raises(ConfigError) as info:
        LangfuseStream(LangfuseConfig(**https), name="lf")
    assert info.value.stream == "lf" and info.value.key == "ca_bundle"
    with pytest.raises(ConfigError):  # a scheme in capitals is https too
        LangfuseClient(LangfuseConfig(**dict(https, host="HTTPS://lf.test")))
    # Not used, or not the one used: no error.
    LangfuseClient(LangfuseConfig(**dict(https, host="http://lf.test")))
    LangfuseClient(LangfuseConfig(**dict(https, tracing_enabled=False)))
    present = tmp_path / "ca.pem"
    present.write_text("")
    LangfuseClient(LangfuseConfig(**dict(https, ca_bundle=str(present))))


@responses.activate
def test_429_is_retried_and_then_reported_with_retry_after():
    for _ in range(4):
        responses.add("POST", URL, status=429, headers={"Retry-After": "0"}, json={"message": "slow down"})
    with pytest.raises(LangfuseStatusError) as info:
        make().send([])
    assert info.value.status == 429 and info.value.retryable and info.value.retry_after == 0


def test_repr_hides_the_secret():
    client = make()
    assert "sk-secret-value" not in repr(client) and "sk-secret-value" not in repr(client.config)


# -- the backoff curve, measured with a fake sleep --------------------------------------------------


def _retry_sleeps(config, statuses, retry_after=None):
    slept = []
    retry = make_retry(config)
    retry.sleeper = slept.append
    for status in statuses:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        response = HTTPResponse(status=status, headers=headers, preload_content=False)
        retry = retry.increment(method="POST", url="/api/public/ingestion", response=response)
        retry.sleep(response)
    return slept


def test_backoff_is_100_200_400_ms():
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s")
    assert _retry_sleeps(config, [503, 503, 503]) == [0.1, 0.2, 0.4]


def test_backoff_doubles_to_800_ms_then_caps_at_one_second():
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s", max_retries=6)
    assert _retry_sleeps(config, [500] * 6) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_retry_after_is_honoured_and_capped():
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s", max_retry_after=5)
    assert _retry_sleeps(config, [429, 429], retry_after="2") == [2.0, 2.0]
    assert _retry_sleeps(config, [429], retry_after="3600") == [5.0]
    assert _retry_sleeps(config, [503], retry_after="soon") == [0.1]  # malformed header: the backoff


@pytest.mark.parametrize("header, expected", [
    ("7", 7.0), (" 2.5 ", 2.5), ("3600", 60.0), ("-4", 0.0), ("soon", None), ("nan", None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date gone by: at once
    ("Fri, 01 Jan 2100 00:00:00 GMT", 60.0),  # far ahead: capped
])
def test_retry_after_as_seconds_or_an_http_date_for_the_worker(header, expected):
    from dirigent_langfuse.delivery.answers import _retry_after

    response = requests.Response()
    response.headers["Retry-After"] = header
    assert _retry_after(response, 60.0) == expected


def test_retries_exhausted_raise_in_policy():
    config = LangfuseConfig(host=HOST, public_key="p", secret_key="s")
    from urllib3.exceptions import MaxRetryError

    with pytest.raises(MaxRetryError):
        _retry_sleeps(config, [503] * 4)
    assert make_retry(config).is_retry("POST", 404) is False
    assert make_retry(config).is_retry("POST", 503) is True


# -- health and auth checks ------------------------------------------------------------------------


@responses.activate
def test_server_version_reads_health_or_none():
    responses.add("GET", HOST + "/api/public/health", json={"status": "OK", "version": "3.112.0"})
    assert make().server_version() == "3.112.0"
    responses.replace("GET", HOST + "/api/public/health", status=404)
    assert make().server_version() is None
    responses.replace("GET", HOST + "/api/public/health", body="<html>", status=200)
    assert make().server_version() is None
    responses.replace("GET", HOST + "/api/public/health", body=requests.exceptions.ConnectTimeout())
    assert make().server_version() is None


@responses.activate
def test_otlp_is_gzip_json_with_ingestion_version_header():
    import gzip

    responses.add("POST", HOST + "/api/public/otel/v1/traces", json={})
    result = make().send_otlp(b'{"resourceSpans":[]}')
    (call,) = responses.calls
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["Content-Encoding"] == "gzip"
    assert call.request.headers["x-langfuse-ingestion-version"] == "4"
    assert gzip.decompress(call.request.body) == b'{"resourceSpans":[]}'
    assert result.rejected == 0


@responses.activate
def test_otlp_partial_success_and_400():
    responses.add("POST", HOST + "/api/public/otel/v1/traces",
                  json={"partialSuccess": {"rejectedSpans": "2", "errorMessage": "bad span"}})
    result = make().send_otlp(b"{}")
    assert result.rejected == 2 and result.message == "bad span"
    responses.replace("POST", HOST + "/api/public/otel/v1/traces", status=400, json={"message": "Invalid OTLP"})
    with pytest.raises(LangfuseStatusError, match="Invalid OTLP"):
        make().send_otlp(b"{}")


def test_a_retry_stops_at_the_shutdown_deadline_also_for_a_request_in_flight():
    import time

    client = make(max_retries=3)
    in_flight = client._retry.new(total=2)  # urllib3's copy, for a request already under way
    slept = []
    in_flight.sleeper = slept.append
    assert not in_flight.is_exhausted()
    client.stop_retrying_at(time.monotonic() + 0.05)
    in_flight._sleep(10.0)  # a backoff or a Retry-After never waits past the deadline
    assert slept and slept[0] <= 0.05
    client.stop_retrying_at(time.monotonic() - 1.0)
    assert in_flight.is_exhausted() and client._retry.new().is_exhausted()
    from urllib3.util.retry import RequestHistory

    client.stop_retrying_at(time.monotonic() + 0.05)
    after_a_503 = in_flight.new(history=(RequestHistory("POST", "/", None, 503, None),))
    assert after_a_503.get_backoff_time() == 0.1  # its retry would start after the deadline: none
    assert after_a_503.is_exhausted()
