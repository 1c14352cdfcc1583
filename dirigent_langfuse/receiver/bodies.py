"""Request bodies as Langfuse's server reads them: chunked or not, gzip, bounded once
decompressed, and OTLP exports in protobuf (when the optional `opentelemetry-proto` is installed) as OTLP/JSON."""

from __future__ import annotations

import base64
import io
import zlib
from typing import Any, Dict, List

__all__ = ["TooLarge", "gunzip", "decode_protobuf", "read_chunked", "drain"]


class TooLarge(Exception):
    pass


def read_chunked(rfile: io.BufferedIOBase, limit: int) -> bytes:
    """A `Transfer-Encoding: chunked` body, within `limit` (else TooLarge); ValueError for a
    chunk size that is not one."""
    parts: List[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1026)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise TooLarge()
        parts.append(rfile.read(size))
        rfile.readline(3)  # the chunk's CRLF


def drain(rfile: io.BufferedIOBase, length: int) -> None:
    """Read and discard a refused body (up to 64 MiB), as servers do before closing: a client
    still sending when the socket closes would see a reset instead of the 413."""
    left = length if length <= 64 * 1024 * 1024 else 0
    while left > 0:
        got = rfile.read(min(left, 65536))
        if not got:
            break
        left -= len(got)


def gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of `data`, never inflating more than `limit` bytes (a gzip bomb gets 413,
    not the receiver's memory). ValueError or zlib.error when it is not complete, valid gzip."""
    out: List[bytes] = []
    total = 0
    while data:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = inflate.decompress(data, limit + 1 - total)
        total += len(chunk)
        if total > limit or inflate.unconsumed_tail:
            raise TooLarge()
        if not inflate.eof:
            raise ValueError("truncated gzip")
        out.append(chunk)
        data = inflate.unused_data
    return b"".join(out)


def decode_protobuf(data: bytes) -> Dict[str, Any]:
    try:
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:
        raise LookupError("application/x-protobuf needs the optional opentelemetry-proto package") from None
    from google.protobuf.message import DecodeError

    message = ExportTraceServiceRequest()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:  # not a ValueError: it killed the handler, the client got no answer
        raise ValueError(f"not an ExportTraceServiceRequest in protobuf ({exc})") from None
    out: Dict[str, Any] = MessageToDict(message)
    for rs in out.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64decode(span[key]).hex()
    return out
