"""`tokvec serve`: an embedding service that speaks OpenAI's `/v1/embeddings`, so the clients pipelines already use
(the `openai` package, LangChain's and LlamaIndex's OpenAI embeddings, vector databases' ingest tools) call a tokvec
model. Endpoints: POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics (Prometheus text).

A plain ASGI application run by uvicorn (httptools parser, uvloop event loop): docs/serve.md has the measurement
that chose it. Requests that arrive together are embedded in one call into the core (`Batcher`); the core releases
the GIL and spreads a large batch over the cores. Not imported by `import tokvec`: it needs the `serve` extra.
"""

from __future__ import annotations

import asyncio
import binascii
import bisect
import dataclasses
import functools
import hmac
import ipaddress
import mmap
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

from tokvec.model import Model, load

__all__ = ["App", "Limits", "main", "parse_models", "run"]

#: The request fields of OpenAI's embeddings API; any other is refused, so that a misspelt one is not ignored.
FIELDS = ("input", "model", "encoding_format", "dimensions", "user")

#: Batches whose texts add up to at most this many characters are embedded on the event loop's thread: the core
#: takes ~30 us per 1,000 characters, less than handing the work to a thread and back. Larger ones go to the
#: embedding thread so that the loop keeps reading and answering other connections meanwhile.
INLINE_CHARS = 4096

#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_JSON = (b"content-type", b"application/json")
_TEXT = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_ENDPOINTS = {
    "/v1/embeddings": ("POST",),
    "/v1/models": ("GET",),
    "/health": ("GET",),
    "/metrics": ("GET",),
}


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it the request gets a 4xx (docs/serve.md lists the defaults)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048
    max_text_chars: int = 100_000
    read_timeout: float = 30.0
    batch_window_ms: float = 0.0
    max_batch_texts: int = 4096

    def check(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_text_chars", "max_batch_texts"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
        if not self.read_timeout > 0:
            raise ValueError(f"--read-timeout must be > 0 seconds, got {self.read_timeout}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise ValueError(f"--batch-window-ms must be in [0, 1000], got {self.batch_window_ms}")


class ApiError(Exception):
    """A request the service refuses: an HTTP status and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = list(headers)

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        )


def _json_400(parser: str) -> type:
    """uvicorn's HTTP protocol class for `parser` ("httptools" or "h11"), answering the requests its parser cannot
    read (a malformed request line or header, an invalid chunk) in OpenAI's error shape too: uvicorn answers them
    itself, before the application sees a request, in plain text."""
    if parser == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class JsonErrors(base):  # type: ignore[misc,valid-type]
        def send_400_response(self, msg: str) -> None:
            body = ApiError(400, f"the request is not valid HTTP/1.1: {msg}", code="bad_http").body()
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            self.transport.close()

    return JsonErrors


class _Gone(Exception):
    """The client closed the connection before its request body was read: nothing to answer."""


def parse_models(specs: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """`--model` values as (name, what to load): `NAME=PATH` names a model; a bare PATH or Hub id is its own name;
    none at all serves the bundled model as `default`."""
    if not specs:
        return [("default", None)]
    out: list[tuple[str, str | None]] = []
    for s in specs:
        name, sep, path = s.partition("=")
        # `a=b` names a model unless the part before `=` looks like a path (a file or folder may contain "=")
        if sep and name and path and "/" not in name and os.sep not in name:
            out.append((name, path))
        else:
            out.append((s, s))
    seen: set[str] = set()
    for name, _ in out:
        if name in seen:
            raise ValueError(f"--model: two models are named {name!r}; name them apart with --model NAME=PATH")
        seen.add(name)
    return out


class _Served:
    """A model as the service runs it: the vectors and token counts of a batch of texts."""

    def __init__(self, name: str, model: Model) -> None:
        self.name = name
        self.dim = model.dim
        # One tokenization per text gives both the ids pooled and the count reported in `usage`: the core's
        # `encode` then `embed_ids` is the very computation of `embed` (the same pooling of the same ids), and the
        # count is `Model.count_tokens`'s (the lengths of the same ids). Calling `embed` and `count_tokens` would
        # tokenize every text twice: ~30 us more CPU for a request of 32 short texts (of ~250 us), 1-4 us for one.
        self._encode = model._core.encode
        self._pool = model._core.embed_ids

    def compute(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, token counts) of texts."""
        ids, offsets = self._encode(texts)
        return self._pool(ids, offsets), np.diff(offsets)


class Batcher:
    """Collects the texts of concurrent requests to one model (and one `dimensions`) and embeds them in one core
    call. A batch starts when the loop is next free (`window` 0) or `window` seconds after its first request,
    or at once when it holds `max_texts`; while a batch runs on the embedding thread the next one gathers."""

    def __init__(
        self,
        served: _Served,
        window: float,
        max_texts: int,
        executor: ThreadPoolExecutor,
        stats: Metrics,
    ) -> None:
        self.served = served
        self.window = window
        self.max_texts = max_texts
        self.executor = executor
        self.stats = stats
        self.pending: list[tuple[list[str], asyncio.Future]] = []
        self.n_pending = 0
        self.scheduled = False
        self.busy = False

    def submit(self, texts: list[str]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((texts, fut))
        self.n_pending += len(texts)
        if self.busy:
            pass  # taken when the running batch ends
        elif self.n_pending >= self.max_texts:
            self._flush()
        elif not self.scheduled:
            self.scheduled = True
            if self.window > 0:
                loop.call_later(self.window, self._flush)
            else:
                loop.call_soon(self._flush)
        return fut

    def _take(self) -> list[tuple[list[str], asyncio.Future]]:
        n = 0
        k = 0
        for texts, _ in self.pending:
            if k and n + len(texts) > self.max_texts:
                break
            n += len(texts)
            k += 1
        batch, self.pending = self.pending[:k], self.pending[k:]
        self.n_pending -= n
        return batch

    def _flush(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        batch = self._take()
        texts = batch[0][0] if len(batch) == 1 else [t for ts, _ in batch for t in ts]
        self.stats.batch(len(batch))
        if sum(map(len, texts)) <= INLINE_CHARS:
            try:
                result = self.served.compute(texts)
            except Exception:  # noqa: BLE001 - redone request by request, each failing alone
                self._one_by_one(batch)
            else:
                self._deliver(batch, result)
            self._next()
            return
        self.busy = True
        task = asyncio.get_running_loop().run_in_executor(self.executor, self.served.compute, texts)
        task.add_done_callback(lambda t: self._done(batch, t))

    def _done(self, batch: list[tuple[list[str], asyncio.Future]], task: asyncio.Future) -> None:
        self.busy = False
        if task.exception() is None:
            self._deliver(batch, task.result())
        else:
            self._one_by_one(batch)
        self._next()

    def _next(self) -> None:
        if self.pending and not self.scheduled and not self.busy:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    @staticmethod
    def _deliver(batch: list[tuple[list[str], asyncio.Future]], result: tuple[np.ndarray, np.ndarray]) -> None:
        vecs, counts = result
        a = 0
        for texts, fut in batch:
            b = a + len(texts)
            if not fut.done():  # cancelled: its request was stopped (the drain timed out)
                fut.set_result((vecs[a:b], counts[a:b]))
            a = b

    def _one_by_one(self, batch: list[tuple[list[str], asyncio.Future]]) -> None:
        # a batch that failed is redone request by request, so one bad request fails alone
        for texts, fut in batch:
            if fut.done():
                continue
            try:
                fut.set_result(self.served.compute(texts))
            except Exception as e:  # noqa: BLE001 - answered as this request's error
                fut.set_exception(e)


class Metrics:
    """Counters of the service in Prometheus' text format, kept in a block of int64 (and one float64) slots, a row
    per process: one process has its own block; the processes of `--workers N` each write their own row of one
    block shared by all (`shared`), so each writes alone (no locks) and any of them renders the totals."""

    #: HTTP status codes span [100, 600): a slot for each, so that any status is counted exactly.
    _STATUSES = 500
    _ENDPOINT_NAMES = (*_ENDPOINTS, "other")

    def __init__(self, models: Sequence[str], block: bytearray | mmap.mmap | None = None, row: int = 0) -> None:
        self.models = list(models)
        self._model = {m: i for i, m in enumerate(self.models)}
        self._endpoint = {e: i for i, e in enumerate(self._ENDPOINT_NAMES)}
        n_req = len(self._ENDPOINT_NAMES) * self._STATUSES
        m = len(self.models)
        self._texts = n_req
        self._tokens = n_req + m
        self._buckets = n_req + 2 * m
        self._in_flight = self._buckets + len(LATENCY_BUCKETS) + 1
        self._batches = self._in_flight + 1
        self._batched = self._in_flight + 2
        self._sum = self._in_flight + 3  # the float64 slot: seconds
        self.slots = self._sum + 1
        size = self.row_bytes(self.models)
        if block is None:
            block = bytearray(size)
        if len(block) % size or not 0 <= row < len(block) // size:
            raise ValueError(f"a metrics block of {len(block)} bytes has no row {row} of {size} bytes")
        self._block = block
        self._rows = len(block) // size
        mine = memoryview(block)[row * size : (row + 1) * size]
        self._q = mine.cast("q")
        self._d = mine.cast("d")

    @classmethod
    def row_bytes(cls, models: Sequence[str]) -> int:
        return 8 * (len(cls._ENDPOINT_NAMES) * cls._STATUSES + 2 * len(models) + len(LATENCY_BUCKETS) + 5)

    @classmethod
    def shared(cls, models: Sequence[str], fd: int, row: int) -> Metrics:
        """Row `row` of the block the supervisor of `--workers N` made (the file `fd`, one row per worker)."""
        block = mmap.mmap(fd, os.fstat(fd).st_size)
        os.close(fd)  # the mapping holds the memory
        return cls(models, block, row)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        q = self._q
        q[self._endpoint[endpoint] * self._STATUSES + status - 100] += 1
        if endpoint == "/v1/embeddings":
            q[self._buckets + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._d[self._sum] += seconds

    def embedded(self, model: str, texts: int, tokens: int) -> None:
        i = self._model[model]
        self._q[self._texts + i] += texts
        self._q[self._tokens + i] += tokens

    def batch(self, requests: int) -> None:
        self._q[self._batches] += 1
        self._q[self._batched] += requests

    def begin(self) -> None:
        self._q[self._in_flight] += 1

    def end(self) -> None:
        self._q[self._in_flight] -= 1

    @property
    def answered(self) -> int:
        """/v1/embeddings requests this process answered."""
        return sum(self._q[self._buckets : self._buckets + len(LATENCY_BUCKETS) + 1])

    def render(self) -> bytes:
        rows = np.frombuffer(self._block, dtype=np.int64).reshape(self._rows, self.slots)
        total = rows.sum(axis=0)
        seconds = float(rows[:, self._sum].view(np.float64).sum())
        lines = [
            "# HELP tokvec_requests_total HTTP requests answered, by endpoint and status code.",
            "# TYPE tokvec_requests_total counter",
        ]
        req = total[: len(self._ENDPOINT_NAMES) * self._STATUSES].reshape(len(self._ENDPOINT_NAMES), self._STATUSES)
        counted = sorted((self._ENDPOINT_NAMES[e], s + 100, int(req[e, s])) for e, s in zip(*np.nonzero(req)))
        lines += [f'tokvec_requests_total{{endpoint="{ep}",status="{st}"}} {n}' for ep, st, n in counted]
        for metric, what, at in (("texts", "Texts embedded", self._texts), ("tokens", "Tokens embedded", self._tokens)):
            lines += [f"# HELP tokvec_{metric}_total {what}, by model.", f"# TYPE tokvec_{metric}_total counter"]
            lines += [
                f'tokvec_{metric}_total{{model="{_label(m)}"}} {total[at + i]}' for i, m in enumerate(self.models)
            ]
        lines += [
            "# HELP tokvec_request_duration_seconds Time from a /v1/embeddings request's start to its answer.",
            "# TYPE tokvec_request_duration_seconds histogram",
        ]
        # the count is the buckets' sum, so that +Inf equals it even while another process is counting
        cum = 0
        for le, n in zip((*(repr(b) for b in LATENCY_BUCKETS), "+Inf"), total[self._buckets : self._in_flight]):
            cum += int(n)
            lines.append(f'tokvec_request_duration_seconds_bucket{{le="{le}"}} {cum}')
        lines += [
            f"tokvec_request_duration_seconds_sum {seconds!r}",
            f"tokvec_request_duration_seconds_count {cum}",
            "# HELP tokvec_requests_in_flight Requests being answered now.",
            "# TYPE tokvec_requests_in_flight gauge",
            f"tokvec_requests_in_flight {total[self._in_flight]}",
            "# HELP tokvec_batches_total Calls into the core, each embedding the texts of one or more requests.",
            "# TYPE tokvec_batches_total counter",
            f"tokvec_batches_total {total[self._batches]}",
            "# HELP tokvec_batched_requests_total Requests embedded by those calls (over batches_total: mean batch).",
            "# TYPE tokvec_batched_requests_total counter",
            f"tokvec_batched_requests_total {total[self._batched]}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _label(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class App:
    """The ASGI application. `models` maps the names clients pass as `model` to what `tokvec.load` opens (None: the
    bundled model); each is loaded here, memory-mapped, once. A request's `dimensions` below a model's dim is served
    by the model loaded with `dim=dimensions` (on first use; the pages of the file are shared), whose vectors are
    the truncated ones re-normalized with the core's own arithmetic."""

    #: How many truncated variants (`dimensions`) of each model stay loaded; the least recently used goes first.
    MAX_VARIANTS = 8

    def __init__(
        self,
        models: dict[str, str | os.PathLike[str] | None],
        *,
        api_key: str | None = None,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.limits = limits or Limits()
        self.limits.check()
        self._load = load
        self.paths = dict(models)
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics or Metrics(list(models))
        if self.metrics.models != list(models):
            raise ValueError(f"the metrics count models {self.metrics.models}, not the served {list(models)}")
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokvec-embed")
        self.models = {name: self._batched(name, self._load(path)) for name, path in models.items()}
        self.variants: dict[tuple[str, int], tuple[_Served, Batcher]] = {}
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": self.created, "owned_by": "tokvec", "dim": s.dim}
                    for n, (s, _) in self.models.items()
                ],
            }
        )

    def _batched(self, name: str, model: Model) -> tuple[_Served, Batcher]:
        served = _Served(name, model)
        lim = self.limits
        return served, Batcher(served, lim.batch_window_ms / 1000, lim.max_batch_texts, self.executor, self.metrics)

    async def _variant(self, name: str, dims: int) -> tuple[_Served, Batcher]:
        """The model `name` loaded with `dim=dims`: loaded on the embedding thread on first use, then kept (at most
        MAX_VARIANTS per model, the least recently used dropped first)."""
        key = (name, dims)
        got = self.variants.pop(key, None)
        if got is None:
            load = functools.partial(self._load, self.paths[name], dim=dims)
            model = await asyncio.get_running_loop().run_in_executor(self.executor, load)
            # another request may have loaded it meanwhile: either copy will do
            got = self.variants.pop(key, None) or self._batched(name, model)
        self.variants[key] = got  # the most recently used last
        mine = [k for k in self.variants if k[0] == name]
        for k in mine[: max(0, len(mine) - self.MAX_VARIANTS)]:
            del self.variants[k]
        return got

    # ------------------------------------------------------------------ ASGI
    async def __call__(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    self.executor.shutdown(wait=True)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        t0 = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        self.metrics.begin()
        headers: list[tuple[bytes, bytes]] = [_JSON]
        try:
            status, body, headers = await self._route(scope, receive, path)
        except ApiError as e:
            status, body = e.status, e.body()
            headers = [_JSON, *e.headers]
        except _Gone:
            return
        except Exception as e:  # noqa: BLE001 - a bug must answer 500, not drop the connection
            print(f"tokvec serve: error answering {scope['method']} {path}: {type(e).__name__}: {e}", file=sys.stderr)
            status = 500
            body = ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").body()
        finally:
            self.metrics.end()
        # counted before the answer goes out: a client that has its answer finds it in /metrics, whichever worker
        # of `--workers N` answers the scrape
        self.metrics.request(endpoint, status, time.perf_counter() - t0)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _route(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], path: str
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        methods = _ENDPOINTS.get(path)
        if methods is None:
            raise ApiError(
                404,
                f"no endpoint {path}; this service has POST /v1/embeddings, GET /v1/models, "
                f"GET /health and GET /metrics",
                code="not_found",
            )
        if scope["method"] not in methods:
            raise ApiError(
                405,
                f"{path} answers {', '.join(methods)}, not {scope['method']}",
                code="method_not_allowed",
                headers=[(b"allow", ", ".join(methods).encode())],
            )
        if path == "/health":
            return 200, b'{"status":"ok"}', [_JSON]
        if path == "/metrics":
            return 200, self.metrics.render(), [_TEXT]
        hdrs = dict(scope["headers"])
        self._authorize(hdrs)
        if path == "/v1/models":
            return 200, self._models_body, [_JSON]
        return 200, await self._embeddings(hdrs, receive), [_JSON]

    def _authorize(self, hdrs: dict[bytes, bytes]) -> None:
        if self.api_key is None:
            return
        auth = hdrs.get(b"authorization")
        if auth is None:
            raise ApiError(
                401,
                "no API key given: send the header 'Authorization: Bearer KEY' (the openai client: api_key=KEY)",
                code="invalid_api_key",
                headers=[(b"www-authenticate", b"Bearer")],
            )
        scheme, _, key = auth.partition(b" ")
        # compare_digest takes the same time wherever the key differs, so timing does not reveal its prefix
        if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.api_key):
            raise ApiError(401, "wrong API key", code="invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])

    async def _read_body(self, hdrs: dict[bytes, bytes], receive: Callable[[], Awaitable[dict]]) -> bytes:
        limit = self.limits.max_body_bytes
        ctype = hdrs.get(b"content-type")
        if ctype is not None and not ctype.split(b";")[0].strip().lower() == b"application/json":
            raise ApiError(
                415,
                f"the body must be JSON, sent as 'Content-Type: application/json' (got "
                f"{ctype.decode('latin-1')!r}); with curl: -H 'Content-Type: application/json'",
                code="unsupported_media_type",
            )
        declared = hdrs.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413,
                f"the body has {int(declared)} bytes, more than the {limit} allowed (--max-body-bytes)",
                code="request_too_large",
            )
        # The body must arrive within read_timeout, so that a client that stalls holds only its own connection,
        # and not for ever (uvicorn has no such limit of its own).
        task = asyncio.current_task()
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.limits.read_timeout, expire)
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise _Gone
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        f"the body is more than the {limit} bytes allowed (--max-body-bytes)",
                        code="request_too_large",
                    )
                if not msg.get("more_body"):
                    return (b"".join(parts) + chunk) if parts else chunk
                parts.append(chunk)
        except asyncio.CancelledError:
            if not timed_out:
                raise
            if task is not None and hasattr(task, "uncancel"):  # 3.11+: the task was cancelled by us, not stopped
                task.uncancel()
            raise ApiError(
                408,
                f"the body did not arrive within {self.limits.read_timeout:g} s (--read-timeout)",
                code="request_timeout",
            ) from None
        finally:
            timer.cancel()

    def _request(self, raw: bytes) -> tuple[tuple[_Served, Batcher], list[str], str, int | None]:
        """The checked fields of an embeddings request: model, texts, encoding format, dimensions."""
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(req, dict):
            raise ApiError(
                400, f"the body must be a JSON object with 'input' and 'model', got {_kind(req)}", code="invalid_type"
            )
        extra = [k for k in req if k not in FIELDS]
        if extra:
            raise ApiError(
                400,
                f"unknown field {extra[0]!r}; the fields are {', '.join(FIELDS)}",
                param=extra[0],
                code="unknown_parameter",
            )
        name = req.get("model")
        if name is None:
            raise ApiError(
                400,
                f"'model' is missing; this service has {_names(self.models)}",
                param="model",
                code="missing_parameter",
            )
        if not isinstance(name, str):
            raise ApiError(400, f"'model' must be a string, got {_kind(name)}", param="model", code="invalid_type")
        entry = self.models.get(name)
        if entry is None:
            raise ApiError(
                404,
                f"no model named {name!r}; this service has {_names(self.models)}",
                param="model",
                code="model_not_found",
            )
        fmt = req.get("encoding_format", "float")
        if fmt is None:
            fmt = "float"
        if fmt not in ("float", "base64"):
            raise ApiError(
                400,
                f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                param="encoding_format",
                code="invalid_value",
            )
        dims = req.get("dimensions")
        if dims is not None:
            if not isinstance(dims, int) or isinstance(dims, bool):
                raise ApiError(
                    400, f"'dimensions' must be an integer, got {_kind(dims)}", param="dimensions", code="invalid_type"
                )
            dim = entry[0].dim
            if not 1 <= dims <= dim:
                raise ApiError(
                    400,
                    f"'dimensions' must be in [1, {dim}] for model {name!r} (its vectors have "
                    f"{dim}; fewer keeps the first ones), got {dims}",
                    param="dimensions",
                    code="invalid_value",
                )
        user = req.get("user")
        if user is not None and not isinstance(user, str):
            raise ApiError(400, f"'user' must be a string, got {_kind(user)}", param="user", code="invalid_type")
        return entry, self._texts(req.get("input")), fmt, dims

    def _texts(self, inp: Any) -> list[str]:
        lim = self.limits
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list):
            if not inp:
                raise ApiError(
                    400, "'input' is an empty list; send at least one text", param="input", code="invalid_value"
                )
            texts = inp
            for i, t in enumerate(texts):
                if type(t) is not str:
                    if isinstance(t, int) or (isinstance(t, list) and all(isinstance(x, int) for x in t)):
                        raise _token_ids()
                    raise ApiError(
                        400, f"'input[{i}]' must be a string, got {_kind(t)}", param=f"input[{i}]", code="invalid_type"
                    )
        elif inp is None:
            raise ApiError(
                400, "'input' is missing: a string or a list of strings", param="input", code="missing_parameter"
            )
        else:
            raise ApiError(
                400,
                f"'input' must be a string or a list of strings, got {_kind(inp)}",
                param="input",
                code="invalid_type",
            )
        if len(texts) > lim.max_inputs:
            raise ApiError(
                400,
                f"'input' has {len(texts)} texts, more than the {lim.max_inputs} allowed per request "
                f"(--max-inputs); send them in several requests",
                param="input",
                code="too_many_inputs",
            )
        for i, t in enumerate(texts):
            if len(t) > lim.max_text_chars:
                raise ApiError(
                    400,
                    f"'input[{i}]' has {len(t)} characters, more than the {lim.max_text_chars} "
                    f"allowed (--max-text-chars)",
                    param=f"input[{i}]",
                    code="text_too_long",
                )
        return texts

    async def _embeddings(self, hdrs: dict[bytes, bytes], receive: Callable[[], Awaitable[dict]]) -> bytes:
        (served, batcher), texts, fmt, dims = self._request(await self._read_body(hdrs, receive))
        if dims is not None and dims != served.dim:
            served, batcher = await self._variant(served.name, dims)
        try:
            vecs, counts = await batcher.submit(texts)
        except ValueError as e:
            raise ApiError(400, f"'input' cannot be embedded: {e}", param="input", code="invalid_value") from None
        tokens = int(counts.sum())
        self.metrics.embedded(served.name, len(texts), tokens)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        if fmt == "base64":
            # OpenAI's base64: the float32 values' little-endian bytes
            raw = memoryview(np.ascontiguousarray(vecs, dtype="<f4")).cast("B")
            step = vecs.shape[1] * 4
            b64 = binascii.b2a_base64
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": b64(raw[i * step : (i + 1) * step], newline=False).decode("ascii"),
                }
                for i in range(len(texts))
            ]
        else:
            data = [{"object": "embedding", "index": i, "embedding": vecs[i]} for i in range(len(texts))]
        return orjson.dumps(
            {"object": "list", "data": data, "model": served.name, "usage": usage}, option=orjson.OPT_SERIALIZE_NUMPY
        )


def _token_ids() -> ApiError:
    return ApiError(
        400,
        "'input' holds token ids; this service embeds text: token ids are the client's tokenizer's (tiktoken's for "
        "OpenAI clients), not this model's, so they cannot be mapped to its tokens. Send the texts as strings "
        "(LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False)",
        param="input",
        code="token_ids_unsupported",
    )


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _names(models: dict[str, _Served]) -> str:
    return ", ".join(repr(n) for n in models)


# ---------------------------------------------------------------------- running it


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one, which the startup line prints)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def run(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    sock: socket.socket | None = None,
    drain_timeout: float = 30.0,
    access_log: bool = False,
    log_level: str = "warning",
) -> None:
    """Serves `app` on host:port (or on the listening socket `sock`, whose start-up line is then its owner's to
    print) until SIGTERM or SIGINT, then stops accepting connections, lets the requests in flight finish (at most
    `drain_timeout` seconds) and returns."""
    import importlib.util

    import uvicorn

    worker = sock is not None
    if sock is None:
        sock = bind(host, port)
        _announce(sock, app, "")
    config = uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_json_400("httptools" if importlib.util.find_spec("httptools") else "h11"),
        ws="none",
        lifespan="on",
        access_log=access_log,
        log_level=log_level,
        server_header=False,
        timeout_graceful_shutdown=drain_timeout,
    )
    server = uvicorn.Server(config)
    stops: list[int] = []

    # uvicorn catches SIGTERM/SIGINT while it serves and drains; afterwards it raises the signal again for the
    # handler that was there before. This one records it, so that a drained service exits with status 0; and a signal
    # that comes before uvicorn's handler is in place (a worker still starting) makes uvicorn stop as soon as it has
    # started, instead of serving on with the stop lost.
    def stopped(signum: int, frame: Any) -> None:
        stops.append(signum)
        server.should_exit = True

    old = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
    who = f"worker {os.getpid()} " if worker else ""
    why = f" ({signal.Signals(stops[0]).name})" if stops else ""
    print(
        f"tokvec serve: {who}stopped{why}; {app.metrics.answered} /v1/embeddings requests answered",
        file=sys.stderr,
    )


def _announce(sock: socket.socket, app: App, how: str) -> None:
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    names = ", ".join(f"{n} (dim {s.dim})" for n, (s, _) in app.models.items())
    print(
        f"tokvec serve: listening on http://{shown}:{bound[1]}/v1/embeddings; models: {names}{how}",
        file=sys.stderr,
        flush=True,
    )


#: How the supervisor of `--workers N` tells each worker its metrics block and row: "FD:ROW".
_METRICS_ENV = "TOKVEC_SERVE_METRICS"


def _unlinked_file() -> int:
    import tempfile

    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


def _supervise(app: App, args: Any, key: str | None) -> None:
    """`--workers N`: N processes `tokvec serve` accept from one listening socket, each with the models mapped (the
    pages of the files are shared). SIGTERM or SIGINT is passed on to each, which drains; if one stops by itself,
    the others are stopped and the command fails."""
    import subprocess

    sock = bind(args.host, args.port)
    argv = [sys.executable, "-m", "tokvec", "serve", "--listen-fd", str(sock.fileno())]
    for m in args.model or []:
        argv += ["--model", m]
    for f in dataclasses.fields(Limits):
        v = getattr(args, f.name)
        if v is not None:
            argv += [f"--{f.name.replace('_', '-')}", str(v)]
    argv += ["--drain-timeout", str(args.drain_timeout)] + (["--access-log"] if args.access_log else [])
    # the key goes by the environment, not the command line that `ps` shows
    env = {k: v for k, v in os.environ.items() if k != "TOKVEC_API_KEY"}
    if key is not None:
        env["TOKVEC_API_KEY"] = key
    # the metrics block: a row per worker, in a file each worker maps (fork-less: the workers are new processes)
    size = args.workers * Metrics.row_bytes(list(app.models))
    block = os.memfd_create("tokvec-serve-metrics") if hasattr(os, "memfd_create") else _unlinked_file()
    os.ftruncate(block, size)
    stopping: list[int] = []
    procs: list[subprocess.Popen] = []

    def stop(signum: int, frame: Any) -> None:
        stopping.append(signum)
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    failed: list[int] = []
    try:
        for row in range(args.workers):
            env[_METRICS_ENV] = f"{block}:{row}"
            procs.append(subprocess.Popen(argv, env=env, pass_fds=(sock.fileno(), block)))
        _announce(sock, app, f"; {args.workers} worker processes")
        sock.close()  # the workers hold it
        os.close(block)
        block = -1
        if stopping:  # a signal came while they were starting
            stop(stopping[0], None)
        alive = {p.pid: p for p in procs}
        while alive:
            pid, status = os.wait()
            p = alive.pop(pid, None)
            if p is None:
                continue
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                failed.append(p.returncode)
            if not stopping:
                stop(0, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        sock.close()
        if block >= 0:
            os.close(block)
    if not stopping or stopping[0] == 0:
        raise SystemExit(f"tokvec serve: a worker process ended by itself (exit statuses {failed or [0]}); stopped")
    # a worker that was still starting when the signal came ends by it (-15, or 143 through the command's handler)
    failed = [c for c in failed if c not in (-signal.SIGTERM, 128 + signal.SIGTERM)]
    if failed:
        raise SystemExit(f"tokvec serve: stopped; worker exit statuses {failed}")
    print(
        f"tokvec serve: stopped ({signal.Signals(stopping[0]).name}); {args.workers} workers drained", file=sys.stderr
    )


def main(args: Any) -> None:
    """`tokvec serve` from its parsed arguments: everything is checked and every model loaded before the socket
    is opened."""

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}
    limits = Limits(**{k: v for k, v in given.items() if v is not None})
    limits.check()
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if args.drain_timeout < 0:
        raise ValueError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout}")
    key = args.api_key if args.api_key is not None else os.environ.get("TOKVEC_API_KEY")
    if key is not None and not key.strip():
        raise ValueError("the API key is empty; give a non-empty --api-key or TOKVEC_API_KEY, or neither")
    if key is not None and (key != key.strip() or not key.isascii() or not key.isprintable()):
        raise ValueError(
            "the API key must be printable ASCII without spaces at either end (it travels in an HTTP header)"
        )
    workers = getattr(args, "workers", 1)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    models = dict(parse_models(args.model))
    fd = getattr(args, "listen_fd", None)
    metrics = None
    if fd is not None and _METRICS_ENV in os.environ:  # one of the processes of `--workers N`
        block, row = (int(x) for x in os.environ.pop(_METRICS_ENV).split(":"))
        metrics = Metrics.shared(list(models), block, row)
    app = App(models, api_key=key, limits=limits, metrics=metrics)
    if fd is not None:
        run(app, sock=socket.socket(fileno=fd), drain_timeout=args.drain_timeout, access_log=args.access_log)
        return
    if key is None and not _loopback(args.host):
        print(
            f"tokvec serve: warning: listening on {args.host} without an API key: anyone who reaches this port can "
            f"use the service (set --api-key or TOKVEC_API_KEY)",
            file=sys.stderr,
        )
    if workers > 1:
        _supervise(app, args, key)
    else:
        run(app, args.host, args.port, drain_timeout=args.drain_timeout, access_log=args.access_log)
