"""`LangfuseClient`: one `requests.Session`, one urllib3 `Retry` policy, both Langfuse endpoints.

The policy (`LangfuseRetry`): 5xx, 429 and connection errors are retried up to `max_retries`
times inside one `send`, sleeping 100 ms → 200 → 400 → 800 ms, capped at `backoff_max` (1 s);
a 429's or 503's `Retry-After` is honoured up to `max_retry_after`. Any other 4xx is final.
Every request is bounded by the connect and read timeouts, and an answer's body must come whole
within `read_timeout` of its headers and be at most `ANSWER_BYTES` (a proxy that trickles its
answer, or sends one without end, cannot hold the sending thread for longer). POSTs are retried
although POST is not idempotent in general: Langfuse de-duplicates ingestion on the envelope id,
and OTel spans carry deterministic ids.

Whatever the server answers — an HTML page from a proxy, an empty body, a truncated JSON — the
client turns it into a result or one of `LangfuseStatusError` / `LangfuseTransportError`; it never
lets a parsing error escape. Neither the secret key nor the Authorization header is ever part
of an exception, a log line or a repr.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
import requests
import requests.auth
import requests.utils
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from .._version import __version__
from ..config import LangfuseConfig
from ..errors import ConfigError, LangfuseStatusError, LangfuseTransportError
from .answers import (
    ANSWER_BYTES,
    _describe,
    _entries,
    _not_langfuse,
    _read,
    _retries,
    _retry_after,
    _short,
    error_message,
    read_answer,
)

__all__ = ["LangfuseClient", "LangfuseRetry", "IngestionResult", "ItemError", "USER_AGENT", "ANSWER_BYTES"]

log = logging.getLogger(__name__)

USER_AGENT = f"dirigent-langfuse/{__version__} (python-requests/{getattr(requests, '__version__', '?')})"
INGESTION_PATH = "/api/public/ingestion"
OTEL_PATH = "/api/public/otel/v1/traces"
HEALTH_PATH = "/api/public/health"


class LangfuseRetry(Retry):
    """urllib3's `Retry` with the seed's curve: the first retry already waits `backoff_factor`.

    urllib3 waits nothing before its first retry and `factor × 2^(n-1)` after; the seed wants
    100 ms before the first, then 200, 400, 800, capped at `backoff_max`.

    Once the stream's shutdown deadline has passed (`stop`, shared by every copy urllib3 makes,
    the one of a request in flight included), nothing is retried and no wait goes past it: the
    attempt in flight at the deadline is the last.
    """

    sleeper = staticmethod(time.sleep)

    def __init__(self, *args: Any, max_retry_after: float = 60.0, answer_seconds: float = 10.0, **kwargs: Any) -> None:
        self.max_retry_after = max_retry_after
        self.answer_seconds = answer_seconds
        self.stop: List[Optional[float]] = [None]  # a time.monotonic() deadline, shared with the copies
        super().__init__(*args, **kwargs)
        self.backoff_cap = kwargs.get("backoff_max", 1.0)

    def new(self, **kw: Any) -> "LangfuseRetry":
        new = super().new(**kw)
        new.max_retry_after = self.max_retry_after
        new.answer_seconds = self.answer_seconds
        new.backoff_cap = self.backoff_cap
        new.sleeper = self.sleeper
        new.stop = self.stop
        return new

    def increment(self, *args: Any, **kwargs: Any) -> "LangfuseRetry":
        new = super().increment(*args, **kwargs)
        response = kwargs.get("response")
        if response is not None:  # to be retried: urllib3 reads the rest of it first, without a bound
            _, problem = read_answer(response, self.answer_seconds)
            if problem is not None:
                response.close()  # its remaining bytes are never read; the connection is not reused
        return new

    def _left(self) -> Optional[float]:
        stop = self.stop[0]
        return None if stop is None else stop - time.monotonic()

    def is_exhausted(self) -> bool:
        left = self._left()  # (a retry whose backoff ends past the deadline would start after it)
        return (left is not None and left <= self.get_backoff_time()) or super().is_exhausted()

    def _sleep(self, seconds: float) -> None:
        left = self._left()
        if left is not None:
            seconds = min(seconds, max(0.0, left))
        if seconds > 0:
            self.sleeper(seconds)

    def sleep_for_retry(self, response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after:
            self._sleep(retry_after)
            return True
        return False

    def _sleep_backoff(self) -> None:
        self._sleep(self.get_backoff_time())

    def get_backoff_time(self) -> float:
        errors = 0
        for entry in reversed(self.history):
            if entry.redirect_location is not None:
                break
            errors += 1
        if errors == 0:
            return 0.0
        return float(min(self.backoff_cap, self.backoff_factor * (2 ** (errors - 1))))

    def parse_retry_after(self, retry_after: str) -> float:
        try:
            seconds = super().parse_retry_after(retry_after)
        except Exception:  # a malformed header is no reason to fail: use the backoff instead
            return self.get_backoff_time()
        return float(min(max(seconds, 0.0), self.max_retry_after))


class _OwnRetryLines(logging.Filter):
    """urllib3 logs a WARNING for every retry of a broken connection ("Retrying (...) after
    connection broken by ..."): three per request while Langfuse is down, which the worker's
    one throttled WARNING a minute is there to avoid. For our own requests (their `Retry` is a
    `LangfuseRetry`) the line goes to our logger at DEBUG instead. Other libraries' urllib3 lines
    are left as they are: some hosts alert on them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], LangfuseRetry):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("urllib3: %s", record.getMessage())
            return False
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_OwnRetryLines())


def make_retry(config: LangfuseConfig) -> LangfuseRetry:
    kwargs: Dict[str, Any] = dict(
        total=config.max_retries,
        connect=config.max_retries,
        read=config.max_retries,
        status=config.max_retries,
        other=0,
        redirect=0,
        backoff_factor=config.backoff_base,
        status_forcelist=frozenset([429, *range(500, 600)]),
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
        max_retry_after=config.max_retry_after,
        answer_seconds=config.read_timeout,
    )
    try:
        return LangfuseRetry(backoff_max=config.backoff_max, **kwargs)
    except TypeError:  # urllib3 1.26 has no backoff_max argument
        retry = LangfuseRetry(**kwargs)
        retry.backoff_cap = config.backoff_max
        return retry


@attrs.frozen
class ItemError:
    """One item Langfuse refused within a 207: its envelope id, status and message."""

    id: str
    status: int
    message: str = ""

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


@attrs.frozen(kw_only=True)
class IngestionResult:
    """What one POST achieved: ids Langfuse took, items it refused, and what the request cost."""

    status: int
    successes: Sequence[str] = ()
    errors: Sequence[ItemError] = ()
    retries: int = 0
    bytes_sent: int = 0
    rejected: int = 0
    message: str = ""


class LangfuseClient:
    """Sends ingestion batches and OTLP exports to one Langfuse project.

    Safe to share between threads (requests' Session is, for this use); the stream uses one
    client from its worker's threads, up to `max_inflight` requests at once, and the pool keeps a
    connection for each (one more for a health check): a smaller pool would close the extra
    connections after every request (a new TCP and TLS handshake each time) with a urllib3
    WARNING each.
    """

    def __init__(self, config: LangfuseConfig, session: Optional[requests.Session] = None) -> None:
        self.config = config
        self.session = self._setup(session or requests.Session())
        if config.tracing_enabled and config.host.lower().startswith("https://") and isinstance(self._verify, str) \
                and not os.path.exists(self._verify):  # requests would raise on every request, naming no setting
            source = next((v for v in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if os.environ.get(v) == self._verify),
                          "the session's verify")
            raise ConfigError(f"is unset, and the CA bundle from {source} does not exist: {self._verify} "
                              f"(set ca_bundle, or correct {source})", key="ca_bundle")

    def _setup(self, session: requests.Session) -> requests.Session:
        self._retry = make_retry(self.config)
        adapter = HTTPAdapter(max_retries=self._retry, pool_connections=1,
                              pool_maxsize=self.config.max_inflight + 1)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.auth = (self.config.public_key, self.config.secret_key)
        session.headers.update({"User-Agent": USER_AGENT})
        # What requests would read from the environment on every request (proxies, CA bundle),
        # read once: a POST then costs a third of the CPU, and proxies keep working.
        if session.trust_env:
            proxies = requests.utils.get_environ_proxies(self.config.host)
            settings = session.merge_environment_settings(self.config.host, proxies, None, None, None)
            self._proxies = dict(settings.get("proxies") or {})
            self._verify = settings.get("verify", True)
        else:
            self._proxies, self._verify = dict(session.proxies), session.verify
        if self.config.ca_bundle:  # the stream's own CA (a self-hosted Langfuse behind a private CA)
            self._verify = self.config.ca_bundle
        # The session's own headers (User-Agent and requests' defaults) plus basic auth, built once.
        self._headers: Dict[str, str] = {
            k: v if isinstance(v, str) else v.decode("latin-1") for k, v in session.headers.items()
        }
        self._headers["Authorization"] = requests.auth._basic_auth_str(self.config.public_key, self.config.secret_key)
        return session

    def reset(self) -> None:
        """A new Session, for a forked child: the parent's pooled sockets must not be shared."""
        self.session = self._setup(requests.Session())

    def stop_retrying_at(self, deadline: float) -> None:
        """No retry, and no wait between attempts, past `deadline` (`time.monotonic()`), also for
        a request in flight: set by the stream's shutdown."""
        self._retry.stop[0] = deadline

    def __repr__(self) -> str:
        return f"LangfuseClient(host={self.config.host!r}, public_key={self.config.public_key!r})"

    def close(self) -> None:
        self.session.close()

    def _post(self, path: str, body: bytes, headers: Dict[str, str]) -> Tuple[requests.Response, Optional[str]]:
        """The answer and why its body is not whole (None: it is), or a `LangfuseTransportError`."""
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self.config.host + path
        request.headers = CaseInsensitiveDict(self._headers)
        request.headers.update(headers)
        request.headers["Content-Length"] = str(len(body))
        request.prepare_cookies(self.session.cookies)  # the Session's cookies, as requests would send them
        request.body = body
        request.hooks = {"response": []}
        try:
            response = self.session.send(
                request, timeout=self.config.timeout, allow_redirects=False, proxies=self._proxies,
                verify=self._verify, stream=True, cert=None,
            )
        except requests.exceptions.RetryError as exc:  # only when urllib3 raises on exhaustion
            error = LangfuseTransportError(f"POST {path}: retries exhausted ({type(exc).__name__})")
            error.retries = self.config.max_retries
            raise error from None
        except requests.exceptions.RequestException as exc:
            error = LangfuseTransportError(f"POST {path}: {_describe(exc)}")
            reason = exc.args[0] if exc.args else None
            if type(reason).__name__ == "MaxRetryError":  # urllib3 tried max_retries more times
                error.retries = self.config.max_retries
            raise error from None
        except OSError as exc:  # not requests' own (a CA bundle it cannot find raises a bare OSError)
            raise LangfuseTransportError(f"POST {path}: {type(exc).__name__} ({_short(str(exc), 200)})") from None
        return response, _read(response, self.config.read_timeout)

    def _check(self, response: requests.Response, path: str, problem: Optional[str] = None) -> None:
        """Only a 2xx means Langfuse took the request. A 3xx (a proxy sending http:// to https://,
        a moved host) is not followed, since a POST's body and credentials must not go where the
        user did not configure, and it is final like a 4xx: it will not change by itself.

        A 2xx whose body did not come whole is no answer (it is retried, with the same ids);
        any other status stands, with what of its body came."""
        status = response.status_code
        if 200 <= status < 300:
            if problem is not None:
                broken = LangfuseTransportError(f"POST {path}: HTTP {status}, but its answer {problem}")
                broken.retries = _retries(response)
                raise broken
            return
        if 300 <= status < 400:
            where = _short(response.headers.get("Location") or "(no Location)")
            host = where[: -len(path)] if where.endswith(path) and "://" in where else "the URL Langfuse is served at"
            message = f"redirected to {where}; set host to {host}"
        else:
            message = error_message(response)
            if problem is not None:
                message = f"{message} (the answer {problem})" if message else f"the answer {problem}"
        error = LangfuseStatusError(status, message, _retry_after(response, self.config.max_retry_after))
        error.retries = _retries(response)
        raise error

    def send(self, items: List[Dict[str, Any]]) -> IngestionResult:
        """POST `{"batch": items}` to the ingestion API; parse Langfuse's 207."""
        import json

        body = json.dumps({"batch": items}, separators=(",", ":")).encode()
        return self.send_ingestion_body(body, len(items))

    def send_ingestion_body(self, body: bytes, count: int) -> IngestionResult:
        """POST an already encoded ingestion body (`{"batch": [...]}` with `count` items)."""
        response, problem = self._post(INGESTION_PATH, body, {"Content-Type": "application/json"})
        self._check(response, INGESTION_PATH, problem)
        successes: List[str] = []
        errors: List[ItemError] = []
        try:
            data = response.json()
        except ValueError:
            data = None
        if not (isinstance(data, dict) and ("successes" in data or "errors" in data)):
            raise _not_langfuse(response, INGESTION_PATH)
        for entry in _entries(data.get("successes")):
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                successes.append(entry["id"])
        for entry in _entries(data.get("errors")):
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                status = entry.get("status")
                message = entry.get("message") or entry.get("error") or ""
                detail = entry.get("error")
                if entry.get("message") and isinstance(detail, str) and detail and detail != message:
                    message = f"{message}: {detail}"  # Langfuse's `error` says why, and what to do
                errors.append(
                    ItemError(
                        entry["id"],
                        int(status) if isinstance(status, (int, float)) and math.isfinite(status) else 500,
                        _short(message if isinstance(message, str) else str(message)),
                    )
                )
        return IngestionResult(
            status=response.status_code,
            successes=tuple(successes),
            errors=tuple(errors),
            retries=_retries(response),
            bytes_sent=len(body),
        )

    def send_otlp(self, body: bytes, compress: bool = True) -> IngestionResult:
        """POST one OTLP/JSON `ExportTraceServiceRequest`; a partial success counts rejected spans."""
        headers = {"Content-Type": "application/json", "x-langfuse-ingestion-version": "4"}
        if compress:
            body = gzip.compress(body, compresslevel=1)  # fastest: the host's CPU over 15 % fewer bytes
            headers["Content-Encoding"] = "gzip"
        response, problem = self._post(OTEL_PATH, body, headers)
        self._check(response, OTEL_PATH, problem)
        rejected = 0
        message = ""
        try:
            data = response.json()
        except ValueError:
            data = None
        if data is None and response.content.strip():  # OTLP allows an empty answer, not a page
            raise _not_langfuse(response, OTEL_PATH)
        if isinstance(data, dict) and isinstance(data.get("partialSuccess"), dict):
            partial = data["partialSuccess"]
            try:
                rejected = int(partial.get("rejectedSpans") or 0)
            except (TypeError, ValueError):
                rejected = 0
            message = _short(str(partial.get("errorMessage") or ""))
        return IngestionResult(
            status=response.status_code,
            retries=_retries(response),
            bytes_sent=len(body),
            rejected=rejected,
            message=message,
        )

    def server_version(self) -> Optional[str]:
        """The `version` of `GET /api/public/health`, or None if it cannot be told."""
        return self.health()[0]

    def health(self) -> Tuple[Optional[str], bool]:
        """(version or None, reached) from `GET /api/public/health`. Not reached: no answer (after
        the retries), or a 5xx or 429, i.e. Langfuse is not up (yet). Any other answer is reached,
        with a version only when it says one."""
        try:
            response = self.session.get(
                self.config.host + HEALTH_PATH, timeout=self.config.timeout, headers={"Accept": "application/json"},
                stream=True,
            )
        except Exception as exc:  # no answer; or anything odd, taken as an answer that tells nothing
            log.debug("health check failed: %s", _describe(exc))
            return None, not isinstance(exc, requests.exceptions.RequestException)
        problem = _read(response, self.config.read_timeout)
        if response.status_code == 429 or response.status_code >= 500:
            return None, False
        if problem is not None:  # a server answered, but not whole: it tells no version
            log.debug("health check: the answer %s", problem)
            return None, True
        if response.status_code != 200:
            return None, True
        try:
            data = response.json()
        except ValueError:
            return None, True
        version = data.get("version") if isinstance(data, dict) else None
        return (version if isinstance(version, str) and version else None), True

    def check_auth(self, transport: str = "ingestion") -> None:
        """One authenticated request that tells whether host and keys work; raises otherwise.

        It sends nothing: an empty ingestion batch, or an empty OTLP export for `otel`.
        """
        if transport == "otel":
            self.send_otlp(b'{"resourceSpans":[]}', compress=False)
        else:
            self.send_ingestion_body(b'{"batch":[]}', 0)


