"""Answers that never end: a body trickled a byte at a time, or one far larger than any of
Langfuse's. Each used to hold the sending thread for as long as the server kept it going (for
ever, for a trickle), with the stream's health still HEALTHY. Real loopback sockets: what is
tested is how the client reads a socket."""

import gzip
import json
import os
import random
import socket
import threading
from typing import List

import pytest

from dirigent_langfuse import LangfuseClient, LangfuseConfig, LangfuseStatusError, LangfuseTransportError
from dirigent_langfuse.delivery.answers import ANSWER_BYTES

from ..helpers import created, stream

# Only a bound on how long a test may wait for the client to come back, so that a client that
# never does fails the test rather than hanging the suite; never a measure of speed.
GIVE_UP = 60.0


class Answerer:
    """A server that reads each request whole, then answers as `script` says:

    - `("trickle", status)`: the status line and headers (a Content-Length of 100,000) at once,
      then the body one byte every 20 ms until the client hangs up;
    - `("huge", status)`: headers for a 1 GiB body, then the body as fast as the client reads it;
    - `("ok", status, body)`: a normal answer.

    `script` is used in order, its last entry for every request after. `finished` counts answers
    written to their end: an answer the client stopped reading is not one of them."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests = 0
        self.finished = 0
        self.hung_up = threading.Event()  # the client closed a connection in the middle of an answer
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = "http://127.0.0.1:%d" % self._sock.getsockname()[1]
        self._threads: List[threading.Thread] = []
        self._conns: List[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _read_request(self, reader):
        line = reader.readline()
        if not line:
            return False
        length = 0
        while True:
            header = reader.readline()
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        reader.read(length)
        return True

    def _connection(self, conn):
        reader = conn.makefile("rb")
        try:
            while not self._stop.is_set() and self._read_request(reader):
                step = self.script[min(self.requests, len(self.script) - 1)]
                self.requests += 1
                if not self._answer(conn, step):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def _answer(self, conn, step):
        kind, status = step[0], step[1]
        head = "HTTP/1.1 %d Answer\r\nContent-Type: application/json\r\n" % status
        try:
            if kind == "ok":
                body = step[2]
                conn.sendall((head + "Content-Length: %d\r\n\r\n" % len(body)).encode() + body)
                self.finished += 1
                return True
            if kind == "trickle":
                conn.sendall((head + "Content-Length: 100000\r\n\r\n").encode())
                for _ in range(100000):
                    if self._stop.wait(0.02):  # the pace of the trickle, not a synchronisation
                        return False
                    conn.sendall(b" ")
            else:
                size = 1 << 30
                conn.sendall((head + "Content-Length: %d\r\n\r\n" % size).encode())
                chunk = b" " * (1 << 16)
                for _ in range(size // len(chunk)):
                    if self._stop.is_set():
                        return False
                    conn.sendall(chunk)
            self.finished += 1
            return True
        except OSError:  # the client hung up in the middle of it
            self.hung_up.set()
            return False

    def stop(self):
        self._stop.set()
        self._sock.close()
        for conn in self._conns:  # (a connection kept alive waits for the next request)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def answerer():
    made = []

    def make(*script):
        made.append(Answerer(*script))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def client(url, **kw):
    kw.setdefault("max_retries", 0)
    return LangfuseClient(LangfuseConfig(host=url, public_key="pk-lf-1", secret_key="sk-secret-value",
                                         connect_timeout=2.0, read_timeout=0.5, **kw))


def outcome(call):
    """What `call()` returned or raised, from another thread; None if it never came back."""
    box = []

    def run():
        try:
            box.append(call())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GIVE_UP)
    return box[0] if box else None


def test_a_trickled_207_fails_after_read_timeout_and_the_connection_is_dropped(answerer):
    server = answerer(("trickle", 207))
    result = outcome(lambda: client(server.url).send([]))
    assert isinstance(result, LangfuseTransportError), result
    assert "did not complete within read_timeout (0.5 s)" in str(result)
    assert server.hung_up.wait(GIVE_UP)  # its remaining bytes are never read
    assert server.finished == 0


def test_a_trickled_otlp_answer_fails_the_same_way(answerer):
    server = answerer(("trickle", 200))
    result = outcome(lambda: client(server.url).send_otlp(b'{"resourceSpans":[]}'))
    assert isinstance(result, LangfuseTransportError), result
    assert "read_timeout" in str(result)


def test_a_trickled_503_is_retried_and_then_still_a_503(answerer):
    """urllib3 reads the rest of an answer it retries before sending again; that read is bounded too."""
    server = answerer(("trickle", 503))
    result = outcome(lambda: client(server.url, max_retries=2, backoff_base=0.01).send([]))
    assert isinstance(result, LangfuseStatusError), result
    assert result.status == 503 and result.retryable and result.retries == 2
    assert server.requests == 3 and server.finished == 0


def test_a_trickle_then_langfuse_s_answer_delivers_on_the_retry(answerer):
    body = json.dumps({"successes": [{"id": "e1", "status": 201}], "errors": []}).encode()
    server = answerer(("trickle", 502), ("ok", 207, body))
    result = outcome(lambda: client(server.url, max_retries=1, backoff_base=0.01).send([]))
    assert not isinstance(result, Exception), result
    assert result.successes == ("e1",) and result.retries == 1


def test_an_endless_2xx_is_read_up_to_its_bound_then_refused_as_not_langfuse_s_answer(answerer):
    server = answerer(("huge", 207))
    result = outcome(lambda: client(server.url).send([]))
    assert isinstance(result, LangfuseTransportError), result
    assert "larger than %d MiB" % (ANSWER_BYTES >> 20) in str(result)
    assert server.hung_up.wait(GIVE_UP) and server.finished == 0


def test_an_endless_error_page_still_tells_its_status(answerer):
    server = answerer(("huge", 413))
    result = outcome(lambda: client(server.url).send([]))
    assert isinstance(result, LangfuseStatusError), result
    assert result.status == 413


def test_a_trickled_health_check_is_no_answer(answerer):
    server = answerer(("trickle", 200))
    assert outcome(lambda: client(server.url).health()) == (None, True)


def test_a_stream_behind_a_trickling_proxy_is_not_healthy_and_accounts_for_every_item(answerer):
    server = answerer(("trickle", 207))
    events = stream(server.url, read_timeout=0.5, max_retries=1)
    try:
        events.on_event(created())
        assert outcome(lambda: events.flush(timeout=GIVE_UP)) is not None  # once the item was attempted
        stats = events.stats()
        assert stats.items_delivered == 0 and stats.health.value != "healthy"
        assert "did not complete within read_timeout" in (stats.last_error or "")
    finally:
        assert outcome(lambda: events.shutdown(timeout=2)) is not None
    events._worker.join(GIVE_UP)  # a request in flight at the deadline ends on the daemon thread, and counts
    stats = events.stats()
    assert stats.items_pending == 0 and sum(stats.dropped.values()) == 1, stats


class _WithoutRead1:
    """A urllib3 response as urllib3 before 2.3 has it: no `read1` (so that CI, on a newer urllib3,
    covers the path older ones take)."""

    def __init__(self, raw):
        self._raw = raw
        self.headers = raw.headers
        self._fp = raw._fp

    def read(self, *args, **kwargs):
        return self._raw.read(*args, **kwargs)


def test_without_urllib3_s_read1_a_trickle_is_still_given_up_after_read_timeout(answerer):
    import requests

    from dirigent_langfuse.delivery.answers import read_answer

    server = answerer(("trickle", 207))
    response = requests.post(server.url + "/api/public/ingestion", data=b"{}", stream=True, timeout=5)
    result = outcome(lambda: read_answer(_WithoutRead1(response.raw), 0.5))
    server.stop()  # (before the close: a read still blocked holds the response's lock)
    response.raw.close()
    assert result is not None, "read_answer never came back"
    body, problem = result
    assert problem == "did not complete within read_timeout (0.5 s)" and set(body) <= {ord(" ")}


# -- random odd answers --------------------------------------------------------------------------------

RANDOM_SEEDS = range(int(os.environ.get("RANDOM_SEEDS", "40")) // 2)


def _odd_answer(rng):
    """One random answer as a broken server or proxy might send it, and whether to hang up after."""
    status = rng.choice([200, 204, 207, 207, 301, 400, 401, 413, 429, 500, 502, 503, 100, 600, 999])
    body = rng.choice([
        b"", b"null", b"[1, 2]", b"<html><body>502 Bad Gateway</body></html>", b"{" * 50000,
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 100))),
        json.dumps({"successes": [{"id": "e0", "status": 201}], "errors": []}).encode(),
        json.dumps({"successes": rng.choice([None, 1, [None, {"id": 3}]]),
                    "errors": [{"id": "e1", "status": rng.choice(["x", None, 1e300, -1])}]}).encode(),
        json.dumps({"partialSuccess": {"rejectedSpans": rng.choice(["x", -5, 10 ** 30, 2.5])}}).encode(),
    ])
    headers = []
    encoding = rng.randrange(6)
    if encoding == 0:
        body, headers = gzip.compress(body), ["Content-Encoding: gzip"]
    elif encoding == 1:
        headers = ["Content-Encoding: " + rng.choice(["gzip", "br", "deflate"])]  # and a body that is not
    if rng.random() < 0.3:
        headers.append("Retry-After: " + rng.choice(["1", "-5", "abc", "Wed, 21 Oct 2015 07:28:00 GMT", "nan"]))
    framing = rng.randrange(5)
    if framing == 0:
        headers.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 40]), body[i:i + 40]) for i in range(0, len(body), 40)) \
            + rng.choice([b"0\r\n\r\n", b""])
    elif framing == 1:  # promises more than it sends
        headers.append("Content-Length: %d" % (len(body) + rng.randrange(1, 50)))
    elif framing == 2:  # until the connection closes
        headers.append("Connection: close")
    else:
        headers.append("Content-Length: %d" % len(body))
    line = "HTTP/1.1 %d X" % status if rng.random() < 0.9 else rng.choice(["garbage", "HTTP/1.1 abc X", "HTTP/9.9 200 X"])
    head = (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")
    return head + body, framing in (1, 2)


class OddServer(Answerer):
    def __init__(self, rng):
        self.rng = rng
        super().__init__(("odd", 0))

    def _answer(self, conn, step):
        if self.rng.random() < 0.05:
            return False  # hangs up without an answer
        data, hang_up = _odd_answer(self.rng)
        if self.rng.random() < 0.05:
            data, hang_up = data[: self.rng.randrange(len(data) + 1)], True
        try:
            conn.sendall(data)
        except OSError:
            return False
        return not hang_up


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_odd_answers_only_ever_give_a_result_for_a_2xx_or_one_of_our_errors(seed):
    rng = random.Random(seed)
    server = OddServer(rng)
    try:
        lf = LangfuseClient(LangfuseConfig(
            host=server.url, public_key="pk-lf-1", secret_key="sk-secret-value", max_retries=rng.randrange(3),
            backoff_base=0.001, backoff_max=0.002, max_retry_after=0.01, connect_timeout=1.0, read_timeout=0.2))
        for _ in range(4):
            what = rng.choice(["ingestion", "otel", "health"])
            try:
                if what == "ingestion":
                    result = lf.send([{"id": "e%d" % i, "type": "trace-create", "timestamp": "t", "body": {"id": "x"}}
                                      for i in range(3)])
                    assert 200 <= result.status < 300, (seed, result)
                elif what == "otel":
                    assert 200 <= lf.send_otlp(b'{"resourceSpans":[]}').status < 300, seed
                else:
                    version, reached = lf.health()
                    assert version is None or isinstance(version, str), seed
            except (LangfuseStatusError, LangfuseTransportError) as exc:
                assert "sk-secret-value" not in str(exc), seed
    finally:
        server.stop()
