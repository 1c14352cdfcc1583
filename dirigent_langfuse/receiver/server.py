"""A Langfuse-compatible receiver: `http.server` + `sqlite3`, standard library only.

It answers the endpoints a client of Langfuse's public API uses, the way Langfuse does:

- bodies over `max_request_bytes` (Langfuse Cloud's 5 MB by default), as sent or once inflated,
  get 413; a bad `Content-Length` or gzip body gets 400; chunked bodies are read;
- `POST /api/public/ingestion`: basic auth (401), `{"batch": [...]}` or 400, then 207 with
  `successes` and `errors` per item (an item that is not a valid `IngestionEvent` gets 400). As
  version 4 or later (`version`), it takes only `score-create` there, as Langfuse v4 does in its
  default events_only write mode: every other event gets 400 "Event type not accepted";
- `POST /api/public/otel/v1/traces`: OTLP/JSON, gzip or not (protobuf when the optional
  `opentelemetry-proto` package is installed, else 415); 200 `{}`; 400 for a malformed export;
- `GET /api/public/health` with a configurable `version`;
- `GET /api/public/traces` and `GET /api/public/traces/{id}` (with its observations);
- web pages for people (`pages.py`): `/`, `/traces/{id}`, `/sessions/{id}`, open on a loopback
  address and behind HTTP basic auth (the same keys) on any other, each with a
  Content-Security-Policy that runs only the receiver's own script.

`Receiver(...).start()` serves on a background thread (port 0 picks a free one); `faults` is a
`FaultPlan` to rehearse outages; `pause()` / `resume()` close and reopen the listening socket, so
that clients see refused connections. Nagle's algorithm is off on every connection.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError
from ..wire.encoding import dumps
from ..wire.limits import V4_REFUSAL
from . import pages
from .bodies import TooLarge, decode_protobuf, drain, gunzip, read_chunked
from .checks import OtlpError, check_item, otlp_spans
from .faults import Fault, FaultPlan
from .store import Store
from .views import api_get

__all__ = ["Receiver", "DEFAULT_PUBLIC_KEY", "DEFAULT_SECRET_KEY"]

log = logging.getLogger(__name__)

DEFAULT_PUBLIC_KEY = "pk-lf-local"
DEFAULT_SECRET_KEY = "sk-lf-local"
MAX_REQUEST_BYTES = 5 * 1024 * 1024  # Langfuse Cloud's documented limit: 5 MB per request
_PAGE_HEADERS = {
    "Content-Security-Policy": pages.CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()  # a failure ends this connection only (handle_error)
            self.request.settimeout(None)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the store counts requests
        log.debug("receiver: " + format, *args)

    # -- helpers ---------------------------------------------------------------------------------

    def _guarded(self, handle: Any) -> None:
        """A bug of the receiver's answers 500, as a server would, instead of closing the
        connection with no answer at all (which a client takes for a network failure), and is
        logged at ERROR. A connection that ended under it (the client went away: a timeout, a
        reset; a fault closed it; the receiver was paused or stopped, its store closed, while the
        request ran) ends as before, logged at DEBUG (`handle_error`)."""
        self._answered = False
        self._trickle: Optional[float] = None  # a `trickle` fault's seconds per byte of the answer
        try:
            handle()
        except OSError:
            raise
        except Exception as exc:
            self.close_connection = True
            where = (self.command, urlsplit(self.path).path, type(exc).__name__, exc)
            if self._answered or self._stopped():
                log.debug("receiver: %s %s ended with its connection (%s: %s)", *where, exc_info=exc)
                return
            log.error("receiver: %s %s failed (%s: %s)", *where, exc_info=exc)  # before the answer: a
            try:  # client that reads the 500 finds it logged
                self._send(500, {"message": f"internal error in the receiver ({type(exc).__name__}); see its log"})
            except (OSError, ValueError):  # no connection left to answer on
                pass

    def _stopped(self) -> bool:
        """The receiver was paused or stopped while this request ran (its server is not ours)."""
        return self.server.receiver._server is not self.server

    def _send(
        self, code: int, payload: Any, headers: Optional[Dict[str, str]] = None, raw: Optional[bytes] = None,
        content_type: str = "text/html",
    ) -> None:
        self._answered = True
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if raw is None else content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self._trickle is None:
            self.wfile.write(body)
            return
        self.wfile.flush()
        for index in range(len(body)):  # until the client gives up on it (the write then fails)
            if self._stopped():  # a crash ends it too
                self.close_connection = True
                return
            time.sleep(self._trickle)
            self.wfile.write(body[index:index + 1])
            self.wfile.flush()

    def _authorized(self, page: bool = False) -> bool:
        """The API always asks for the keys; a page only where the receiver listens beyond loopback."""
        receiver = self.server.receiver
        if page and receiver.loopback:
            return True
        if hmac.compare_digest((self.headers.get("Authorization") or "").encode(), receiver.auth_header.encode()):
            return True
        if page:
            self._send(401, None, {"WWW-Authenticate": 'Basic realm="dirigent-langfuse receiver", charset="UTF-8"',
                                   **_PAGE_HEADERS},
                       raw=b"<!doctype html><title>Sign in</title><p>The receiver's public and secret key, please.</p>")
            return False
        self._send(401, {"message": "Invalid credentials. Confirm that you've configured the correct host."})
        return False

    def _refuse(self, code: int, message: str) -> None:
        """Answer and close: the rest of the body (if any) is never read."""
        self.close_connection = True
        self._send(code, {"message": message}, {"Connection": "close"})

    def _body(self) -> Optional[bytes]:
        """The request body, decompressed; None once a 400 or 413 has been answered. Bodies over
        `max_request_bytes`, as sent or decompressed, get 413, as Langfuse's own limit would."""
        receiver = self.server.receiver
        limit = receiver.max_request_bytes
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            try:
                data = read_chunked(self.rfile, limit)
            except TooLarge:
                self._refuse(413, f"Request body exceeds the limit of {limit} bytes")
                return None
            except ValueError:
                self._refuse(400, "malformed chunked body")
                return None
            length = len(data)
        else:
            raw = self.headers.get("Content-Length")
            try:
                length = int(raw) if raw is not None else 0
            except ValueError:
                length = -1
            if length < 0:
                self._refuse(400, f"invalid Content-Length {raw!r}")
                return None
            if length > limit:
                drain(self.rfile, length)
                self._refuse(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
                return None
            data = self.rfile.read(length) if length else b""
        if length > receiver.max_body:
            receiver.max_body = length
        receiver.store.bump("bytes_received", length)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                data = gunzip(data, limit)
            except TooLarge:
                self._refuse(413, f"Request body exceeds the limit of {limit} bytes once decompressed")
                return None
            except (ValueError, zlib.error):
                self._send(400, {"message": "body is not valid gzip"})
                return None
        return data

    def _fault(self) -> Optional[Fault]:
        fault = self.server.receiver.faults.next()
        if fault is None:
            return None
        self.server.receiver.store.bump("faults_applied")
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return None
        if fault.kind == "reset":
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.connection.close()
            return fault
        if fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            if fault.code == 502:
                self._send(fault.code, None, headers, raw=b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>")
            else:
                self._send(fault.code, {"message": f"injected fault {fault.code}"}, headers)
            return fault
        if fault.kind == "trickle":  # taken as Langfuse would take it; only its answer trickles
            self._trickle = fault.delay
            return None
        if fault.kind == "page":
            self._send(200, None, raw=b"<html><head><title>Sign in</title></head><body>Please sign in</body></html>")
            return fault
        return fault  # partial: applied by the ingestion handler

    # -- routes ----------------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._guarded(self._post)

    def do_GET(self) -> None:
        self._guarded(self._get)

    def _post(self) -> None:
        path = urlsplit(self.path).path
        receiver = self.server.receiver
        receiver.store.bump("requests")
        data = self._body_checked()
        if data is None:
            return
        fault = self._fault()
        if fault is not None and fault.kind != "partial":
            return
        if path == "/api/public/ingestion":
            self._ingestion(data, fault)
        elif path == "/api/public/otel/v1/traces":
            self._otel(data, fault)
        else:
            self._send(404, {"message": f"no route {path}"})

    def _body_checked(self) -> Optional[bytes]:
        data = self._body()
        if data is None:
            return None
        if not self._authorized():
            return None
        return data

    def _ingestion(self, data: bytes, fault: Optional[Fault]) -> None:
        receiver = self.server.receiver
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError) as exc:
            reason = "body is nested too deeply" if isinstance(exc, RecursionError) else "body is not JSON"
            self._send(400, {"message": "Invalid request data", "error": reason})
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
            self._send(400, {"message": "Invalid request data", "error": "expected {\"batch\": [...]}"})
            return
        successes: List[Dict[str, Any]] = []
        errors: List[Dict[str, Any]] = []
        good: List[Tuple[int, Dict[str, Any]]] = []
        v4 = receiver.v4
        for index, item in enumerate(payload["batch"]):
            item_id = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else f"#{index}"
            if fault is not None and fault.kind == "partial" and index % fault.every == fault.every - 1:
                errors.append({"id": item_id, "status": fault.code, "message": f"injected item fault {fault.code}"})
                continue
            if v4 and not (isinstance(item, dict) and item.get("type") == "score-create"):
                kind = item.get("type") if isinstance(item, dict) else None
                errors.append({"id": item_id, "status": 400, "message": V4_REFUSAL,
                               "error": f"Langfuse {receiver.version} takes only score events on this endpoint "
                                        f"(got {kind!r}); send traces over OTLP, /api/public/otel/v1/traces"})
                continue
            problem = check_item(item)
            if problem:
                errors.append({"id": item_id, "status": 400, "message": "Invalid request data", "error": problem})
            else:
                good.append((index, item))
                successes.append({"id": item_id, "status": 201})
        receiver.store.add_items(data, good, time.time())
        receiver.store.bump("batches")
        self._send(207, {"successes": successes, "errors": errors})

    def _otel(self, data: bytes, fault: Optional[Fault] = None) -> None:
        receiver = self.server.receiver
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            if ctype == "application/x-protobuf":
                payload = decode_protobuf(data)
            elif ctype == "application/json":
                payload = json.loads(data)
            else:
                self._send(415, {"message": f"unsupported content type {ctype!r}"})
                return
            spans = otlp_spans(payload)
        except LookupError as exc:
            self._send(415, {"message": str(exc)})
            return
        except (ValueError, OtlpError) as exc:
            self._send(400, {"message": f"Invalid OTLP export: {exc}"})
            return
        except RecursionError:
            self._send(400, {"message": "Invalid OTLP export: nested too deeply"})
            return
        answer: Dict[str, Any] = {}
        kept = list(enumerate(spans))
        if fault is not None and fault.kind == "partial":  # OTLP's partial success: a count, no ids
            kept = [(i, s) for i, s in kept if i % fault.every != fault.every - 1]
            answer = {"partialSuccess": {"rejectedSpans": str(len(spans) - len(kept)),
                                         "errorMessage": f"injected span fault {fault.code}"}}
        receiver.store.add_export(data if ctype == "application/json" else dumps(payload), kept, time.time())
        receiver.store.bump("batches")
        self._send(200, answer)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/")
        receiver = self.server.receiver
        if path == "/api/public/health":
            self._send(200, {"status": "OK", "version": receiver.version})
            return
        if path.startswith("/api/"):
            if self._authorized():
                self._send(*api_get(receiver.store, path, parse_qs(parts.query)))
            return
        if not self._authorized(page=True):
            return
        page = pages.answer(receiver.store, parts.path, parse_qs(parts.query)) or pages.not_found()
        self._send(page.status, None, _PAGE_HEADERS, raw=page.body, content_type=page.content_type)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    receiver: "Receiver"
    tls: Optional[ssl.SSLContext] = None

    def get_request(self) -> Tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.tls is not None:  # the handshake runs on the connection's own thread, never in accept
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: "set[socket.socket]" = set()
        self.connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout, reset) is normal under faults: no traceback on stderr.
        log.debug("receiver: connection from %s ended with an error", client_address, exc_info=True)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open keep-alive connection, as a crashed server would."""
        with self.connections_lock:
            sockets = list(self.connections)
            self.connections.clear()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Receiver:
    """The embedded Langfuse stand-in. Use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str = ":memory:",
        public_key: str = DEFAULT_PUBLIC_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        version: str = "3.120.0",
        max_request_bytes: int = MAX_REQUEST_BYTES,
        tls: Optional[Tuple[str, str]] = None,
    ) -> None:
        """`tls`: (certificate file, key file), both PEM: serve https:// with them. A
        `max_request_bytes` below 1 (every request would get 413) is a `ConfigError`."""
        if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
            raise ConfigError(f"must be a whole number of bytes, at least 1 (got {max_request_bytes!r})",
                              key="max_request_bytes")
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.tls: Optional[ssl.SSLContext] = None
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
        self.port = port
        self.version = version
        self.store = Store(db, rows=self.v4)  # (v4 keeps an OTel span's exports as rows)
        self.faults = FaultPlan()
        self.public_key = public_key
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self.auth_header = f"Basic {token}"
        self.max_body = 0  # the largest request body seen, in bytes as sent
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def loopback(self) -> bool:
        """Bound to a loopback address: only this machine reaches the pages, which are open."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def v4(self) -> bool:
        """Version 4 or later: the legacy ingestion endpoint takes score events only."""
        head = self.version.strip().lstrip("v").split(".", 1)[0]
        return head.isdigit() and int(head) >= 4

    def __repr__(self) -> str:
        return f"Receiver(url={self.url!r}, public_key={self.public_key!r})"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> "Receiver":
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        server.tls = self.tls
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"receiver:{self.port}")
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop listening: new connections are refused until `resume()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None

    def resume(self) -> None:
        if self._server is None:
            self.start()

    def stop(self) -> None:
        self.pause()
        self.store.close()

    def __enter__(self) -> "Receiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def parse_listen(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT (a port from 0 to 65535), got {text!r}")
    return host or "127.0.0.1", int(port)
