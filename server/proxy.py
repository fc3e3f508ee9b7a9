"""The HTTP guard's request handler: checks inference requests, bounds bodies, forwards everything to Triton.

* Inference requests (`POST /v2/models/<m>[/versions/<v>]/infer`, Triton's own URL pattern), JSON or with the binary
  extension (`Inference-Header-Content-Length`), gzip/deflate too: the JSON part is read and checked
  (inference_request.py) before a byte reaches Triton; a refusal is HTTP 400 with Triton's error shape,
  `{"error": "..."}`, naming the input and the rule. The binary part streams through once the JSON is accepted.
* Every request body is bounded (`max_body_bytes`, 413), the JSON part too (`max_json_bytes`, 413), and so is the
  wait for each of its bytes (`body_idle_s`, 408): a client that trickles holds its connection and Triton's.
* Everything else (health, metadata, repository, shared memory, generate...) is forwarded as it came, headers
  included (all but the hop-by-hop ones); responses stream back unchanged: status, headers, bytes (no
  decompression, no re-encoding), so a 100 MB video costs the guard one buffer, not 100 MB. aiohttp adds `Date` and
  `Server` where Triton sends none.
* A client that goes away cancels the guard's upstream request, which closes that upstream connection. Triton 2.51
  does not notice that while the model runs, so with `abandon_dir` the guard also tells the model through a side
  channel (abandonment.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from wan22_triton.operations import abandonment

from .inference_request import InferenceLimits, Rejected, bad_request, check_inference_request, parse_json

log = logging.getLogger("server.http_guard")

# Triton's model URL pattern (http_server.cc, model_regex_) with the kind fixed to "infer", matched as Triton does:
# in full, on the path without query or fragment.
INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[0-9]+)?/infer")
# Triton's generate extension takes tensor values as JSON the guard cannot bound, is not cancelled when its client
# leaves, and wraps INT32 values: refused here; clients use /infer (or gRPC).
GENERATE_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[0-9]+)?/generate(?:_stream)?")
INFERENCE_HEADER_LENGTH = "Inference-Header-Content-Length"
HEALTH_PATHS = ("/v2/health/",)  # liveness and readiness probes
# RFC 9110 7.6.1 hop-by-hop fields, plus Expect (the guard answers 100-continue itself).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect"})
# Headers aiohttp's client would add on its own; the upstream gets the client's, or none.
CLIENT_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Triton inflates gzip and deflate bodies with zlib's automatic header detection (data_compressor.h, 15 | 32).
ZLIB_AUTO_HEADER = 15 | 32
COMPRESSED_ENCODINGS = ("gzip", "deflate")  # compared exactly, as Triton does
IDENTITY_ENCODINGS = ("", "identity")
STREAM_BUFFER_BYTES = 1 << 20
CHECK_THREADS = 2  # request bodies checked at once, off the event loop; more wait their turn


@dataclass(frozen=True)
class GuardSettings:
    """What the guard allows, and whether it tells models about clients that went away."""

    max_body_bytes: int = 128 << 20  # 2x a 720p A14B expert request in binary (hidden_states + embeddings, 56 MB)
    inference: InferenceLimits = field(default_factory=InferenceLimits)
    connect_timeout_s: float = 30.0
    body_idle_s: float = 30.0  # a client that sends no byte of its body for this long: 408
    abandon_dir: str | None = None  # set: clients that go away are told to the model (abandonment.py)


def error_response(exc: Rejected) -> web.Response:
    """Triton's error shape and content type, so clients report the message as they report Triton's own."""
    return web.Response(status=exc.status, body=json.dumps({"error": f"http guard: {exc}"}).encode(),
                        content_type="application/json")


def _single_header(headers, name: str) -> str | None:
    """A header Triton reads one value of (the first): refused when repeated, so both sides read the same."""
    values = headers.getall(name, [])
    if len(values) > 1:
        raise bad_request(f"header {name} is repeated")
    return values[0] if values else None


def _matches(pattern: re.Pattern, raw_path: str) -> bool:
    # The percent-decoded path is matched too, in case a layer between decodes what this one does not.
    path = re.split(r"[?#]", raw_path, maxsplit=1)[0]
    return bool(pattern.fullmatch(path) or pattern.fullmatch(unquote(path)))


def _is_inference(method: str, raw_path: str) -> bool:
    return method == "POST" and _matches(INFER_PATH, raw_path)  # Triton parses the body of POST only (405 otherwise)


def _forwarded_headers(headers) -> CIMultiDict[str]:
    listed = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP | listed)


def _request_headers(headers, abandon_token: str | None) -> CIMultiDict[str]:
    # The abandon token is the guard's to set: a client's own would be forwarded to the model as if it were.
    forwarded = _forwarded_headers(headers)
    forwarded.popall(abandonment.TOKEN_HEADER, None)
    if abandon_token is not None:
        forwarded[abandonment.TOKEN_HEADER] = abandon_token
    return forwarded


def _inflate(body: bytes, limit: int) -> bytes:
    """The body as Triton inflates it, refused (413) past `limit` bytes: a small body can inflate to gigabytes."""
    inflater = zlib.decompressobj(ZLIB_AUTO_HEADER)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"request body does not inflate: {exc}") from None
    if len(out) > limit:
        raise Rejected(413, f"request body inflates to more than {limit} bytes (--max-body-bytes)")
    if not inflater.eof or inflater.unused_data:
        raise bad_request("request body is not one complete compressed stream")
    return out


class BodyTooLarge(Exception):
    pass


async def _read_some(content: aiohttp.StreamReader, idle_s: float, most: int = -1) -> bytes:
    """The next bytes of a request body (at most `most`; b"" at its end), refused (408) when none come for
    `idle_s`."""
    try:
        return await asyncio.wait_for(content.readany() if most < 0 else content.read(most), idle_s)
    except TimeoutError:
        raise Rejected(408, f"the request body stalled: no byte for {idle_s:g} s") from None


async def _read_exactly(content: aiohttp.StreamReader, size: int, idle_s: float) -> bytes:
    parts, missing = [], size
    while missing:
        part = await _read_some(content, idle_s, missing)
        if not part:
            raise bad_request(f"the request body ended {missing} bytes short of its first {size}")
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


@dataclass
class BoundedBody:
    """A request body on its way upstream: the bytes already read, then the rest as it arrives, bounded in size and
    in the wait for each part; `stalled` says why a forward failed."""

    head: bytes
    rest: aiohttp.StreamReader | None
    limit: int
    idle_s: float
    overflowed: bool = False
    stalled: Rejected | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        sent = len(self.head)
        if self.head:
            yield self.head
        if self.rest is None:
            return
        while True:
            try:
                chunk = await _read_some(self.rest, self.idle_s)
            except Rejected as stalled:
                self.stalled = stalled
                raise
            if not chunk:
                return
            sent += len(chunk)
            if sent > self.limit:  # only a chunked body gets here: a declared length was checked up front
                self.overflowed = True
                raise BodyTooLarge()
            yield chunk


class HttpGuardApp:
    """The request handler and the pool of connections to `upstream` (Triton's HTTP host:port) it forwards through."""

    def __init__(self, upstream: str, settings: GuardSettings) -> None:
        self.upstream = upstream
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self._checks: asyncio.Semaphore | None = None

    async def _off_loop(self, check, *args):
        """`check(*args)` (inflating, parsing, checking a body: CPU work) in a worker thread, at most CHECK_THREADS
        at once, so the event loop keeps answering health probes and streaming other requests meanwhile."""
        if self._checks is None:
            self._checks = asyncio.Semaphore(CHECK_THREADS)
        async with self._checks:
            return await asyncio.to_thread(check, *args)

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # as many upstream connections as clients: Triton queues
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s),  # minutes long
            auto_decompress=False,
            skip_auto_headers=CLIENT_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies are not another's
            read_bufsize=STREAM_BUFFER_BYTES,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        inference = _is_inference(request.method, request.raw_path)
        try:
            if not request.raw_path.startswith("/"):
                raise bad_request("the request target must be a path")
            if _matches(GENERATE_PATH, request.raw_path):
                raise Rejected(403, "the generate extension is off behind the HTTP guard (its inputs are not "
                                    "checked and a client that leaves does not cancel it); POST to .../infer instead")
            body = await self._read_body(request, inference)
        except Rejected as exc:
            log.info("refused %s %s: %s", request.method, request.raw_path, exc)
            return error_response(exc)
        watched = inference and self.settings.abandon_dir is not None
        return await self._forward(request, body, abandonment.new_token() if watched else None)

    async def _read_body(self, request: web.BaseRequest, inference: bool) -> BoundedBody | None:
        limit = self.settings.max_body_bytes
        if not request.body_exists:
            return None
        if request.content_length is not None and request.content_length > limit:
            raise Rejected(413, f"request body is {request.content_length} bytes, more than {limit} (--max-body-bytes)")
        if request.headers.get("Expect", "").lower() == "100-continue":  # curl asks before a body over 1 MB
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not inference:
            return self._body(b"", request.content)
        return await self._read_inference_body(request, limit)

    def _body(self, head: bytes, rest: aiohttp.StreamReader | None) -> BoundedBody:
        return BoundedBody(head, rest, self.settings.max_body_bytes, self.settings.body_idle_s)

    async def _read_inference_body(self, request: web.BaseRequest, limit: int) -> BoundedBody:
        encoding = _single_header(request.headers, "Content-Encoding")
        encoding = "" if encoding is None else encoding
        if encoding not in COMPRESSED_ENCODINGS + IDENTITY_ENCODINGS:
            raise bad_request(f"unsupported Content-Encoding {encoding!r}")
        declared = _single_header(request.headers, INFERENCE_HEADER_LENGTH)
        if declared is not None and not re.fullmatch(r"[0-9]+", declared):
            raise bad_request(f"{INFERENCE_HEADER_LENGTH} must be a decimal number of bytes")
        header_length = None if declared is None else int(declared)
        if header_length == 0:  # raw input: the body is the one input, no JSON to size
            if encoding in COMPRESSED_ENCODINGS:  # but Triton inflates it whole first: bounded here as any other
                raw = await self._read_all(request.content, limit)
                await self._off_loop(_inflate, raw, limit)
                return self._body(raw, None)
            return self._body(b"", request.content)

        length = request.content_length
        if length is not None and encoding in IDENTITY_ENCODINGS:  # the JSON part only; the rest streams after
            json_length = length if header_length is None else header_length
            if json_length > length:
                raise bad_request(f"{INFERENCE_HEADER_LENGTH} {json_length} is more than the body's {length} bytes")
            self._check_json_length(json_length)
            head = await _read_exactly(request.content, json_length, self.settings.body_idle_s)
            await self._off_loop(self._check_json, head, length - json_length)
            return self._body(head, request.content)

        # Compressed or chunked: the whole body, bounded, then what Triton will parse out of it.
        raw = await self._read_all(request.content, limit)
        await self._off_loop(self._check_whole_body, raw, encoding, header_length, limit)
        return self._body(raw, None)

    def _check_json(self, head: bytes, binary_bytes: int) -> None:
        check_inference_request(parse_json(head), binary_bytes, self.settings.inference)

    def _check_whole_body(self, raw: bytes, encoding: str, header_length: int | None, limit: int) -> None:
        decoded = _inflate(raw, limit) if encoding in COMPRESSED_ENCODINGS else raw
        json_length = len(decoded) if header_length is None else header_length
        if json_length > len(decoded):
            raise bad_request(f"{INFERENCE_HEADER_LENGTH} {json_length} is more than the body's {len(decoded)} bytes")
        self._check_json_length(json_length)
        self._check_json(decoded[:json_length], len(decoded) - json_length)

    def _check_json_length(self, json_length: int) -> None:
        limit = self.settings.inference.max_json_bytes
        if json_length > limit:
            raise Rejected(413, f"the JSON part of the inference request is {json_length} bytes, more than {limit} "
                                f"(--max-json-bytes); send large tensors as binary data")

    async def _read_all(self, content: aiohttp.StreamReader, limit: int) -> bytes:
        chunks, size = [], 0
        while chunk := await _read_some(content, self.settings.body_idle_s):
            size += len(chunk)
            if size > limit:
                raise Rejected(413, f"request body is more than {limit} bytes (--max-body-bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _forward(self, request: web.BaseRequest, body: BoundedBody | None,
                       abandon_token: str | None) -> web.StreamResponse:
        assert self.session is not None, "open() first"
        # The exact bytes that were checked go upstream: built as a string, never resolved (`URL.join` would take
        # "//host/..." for another host) nor normalised.
        url = URL(f"http://{self.upstream}{request.raw_path}", encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method, url, headers=_request_headers(request.headers, abandon_token),
                data=body.chunks() if body is not None else None, allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers=_forwarded_headers(upstream.headers))
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except asyncio.CancelledError:  # the client went away (handler_cancellation)
            if abandon_token is not None and response is None:  # ... while the model was still at work
                assert self.settings.abandon_dir is not None
                abandonment.mark_abandoned(self.settings.abandon_dir, abandon_token)
                log.info("client of %s went away: marked %s abandoned", request.raw_path, abandon_token)
            raise
        except aiohttp.ClientError as exc:
            if response is not None and response.prepared:
                raise  # part of the answer is out: aiohttp closes the connection, so the client sees it cut short
            if body is not None and body.overflowed:
                return error_response(Rejected(413, f"request body is more than {body.limit} bytes (--max-body-bytes)"))
            if body is not None and body.stalled is not None:
                return error_response(body.stalled)
            # A health probe before Triton listens is a start in progress, not a fault: the probe gets its 502.
            level = logging.DEBUG if request.path.startswith(HEALTH_PATHS) else logging.WARNING
            log.log(level, "upstream %s failed: %s", url, exc)
            return error_response(Rejected(502, f"upstream {self.upstream} failed: {exc}"))
