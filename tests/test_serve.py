"""`tokvec serve`: the real service in a child process on a free loopback port, called with the real `openai` client
(vectors, base64, `dimensions`, usage, models) and with raw HTTP for every refused request (its status and OpenAI's
error shape), then asked again to show it still answers; SIGTERM lets a request in flight finish and exits 0."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tokvec
from conftest import SENTENCES_TSV, default_signals
from tokvec.formats import DEFAULT_MODEL_DIR

openai = pytest.importorskip("openai")

KEY = "sk-test-0123456789"
LIMITS = ["--max-inputs", "64", "--max-text-chars", "20000", "--max-body-bytes", "65536", "--read-timeout", "1"]


class Server:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokvec", "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            preexec_fn=default_signals,  # noqa: PLW1509
        )
        assert self.proc.stderr is not None
        # The socket listens before this line is printed: connections made after it queue until the service accepts them.
        line = self.proc.stderr.readline()
        assert "listening on http://127.0.0.1:" in line, line + self.proc.stderr.read()
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert raw(self.port, "GET", "/health")[0] == 200

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def raw(
    port: int,
    method: str,
    path: str,
    body: bytes | str | Any = None,
    headers: dict[str, str] | None = None,
    key: str | None = KEY,
) -> tuple[int, dict[str, str], Any]:
    """One request over http.client: status, headers (lower-case names) and the body, parsed when it is JSON."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    h = {"Content-Type": "application/json"} if body is not None else {}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()
    if hdrs.get("content-type", "").startswith("application/json"):
        return r.status, hdrs, json.loads(data)
    return r.status, hdrs, data


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # the key from the environment; two names for the bundled model
    s = Server(
        ["--model", f"default={DEFAULT_MODEL_DIR}", "--model", f"second={DEFAULT_MODEL_DIR}", *LIMITS],
        env={"TOKVEC_API_KEY": KEY},
    )
    yield s
    rc, err = s.stop()
    assert rc == 0, err


@pytest.fixture(scope="module")
def model() -> tokvec.Model:
    return tokvec.load()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with open(SENTENCES_TSV, encoding="utf-8") as f:
        next(f)
        rows = [line.rstrip("\n").split("\t", 1)[1] for _, line in zip(range(40), f)]
    # an empty text (the zero vector), non-ASCII and a long one (past the size embedded on the event loop)
    return [*rows, "", "Größe naïve café 東京 🙂", " ".join(rows)]


def _vector(e: list[float] | str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str) else np.array(e, dtype=np.float32)


def client(port: int, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)


def test_import_tokvec_leaves_the_service_out() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tokvec; print([m for m in ('tokvec.serve', 'openai') if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"


def test_openai_client_float_and_base64_equal_embed(server: Server, model: tokvec.Model, texts: list[str]) -> None:
    want = model.embed(texts)
    with client(server.port) as c:
        # float: JSON numbers, the shortest form that reads back as the same float32
        r = c.embeddings.create(model="default", input=texts, encoding_format="float")
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        np.testing.assert_array_equal(got, want)
        assert [d.index for d in r.data] == list(range(len(texts)))
        assert r.model == "default"
        # the client's default is base64, which it decodes itself as little-endian float32
        r64 = c.embeddings.create(model="second", input=texts)
        np.testing.assert_array_equal(np.array([d.embedding for d in r64.data], dtype=np.float32), want)
        one = c.embeddings.create(model="default", input=texts[0], encoding_format="float")
        assert len(one.data) == 1
        np.testing.assert_array_equal(np.array(one.data[0].embedding, dtype=np.float32), want[0])


def test_base64_is_little_endian_float32(server: Server, model: tokvec.Model, texts: list[str]) -> None:
    st, _, body = raw(
        server.port, "POST", "/v1/embeddings", {"model": "default", "input": texts[:3], "encoding_format": "base64"}
    )
    assert st == 200
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_array_equal(got, model.embed(texts[:3]))


@pytest.mark.parametrize("dims", [1, 64, 200, 256])
def test_dimensions_equal_load_with_dim(server: Server, texts: list[str], dims: int) -> None:
    want = tokvec.load(dim=dims).embed(texts)
    with client(server.port) as c:
        for fmt in ("float", "base64", None):
            if fmt is None:  # the client asks for base64 and decodes it
                r = c.embeddings.create(model="default", input=texts, dimensions=dims)
                got = np.array([d.embedding for d in r.data], dtype=np.float32)
            else:  # the client hands over what the service sent
                r = c.embeddings.create(model="default", input=texts, dimensions=dims, encoding_format=fmt)
                got = np.stack([_vector(d.embedding) for d in r.data])
            assert got.shape == (len(texts), dims)
            np.testing.assert_array_equal(got, want)


def test_more_dimensions_than_variants_kept_all_stay_exact(server: Server, texts: list[str]) -> None:
    # the service keeps 8 `dimensions` variants of a model; asking for 10 drops the least recently used, which is
    # loaded again when asked for again
    ask = texts[:5]
    for dims in [*range(10, 110, 10), 10, 250]:
        st, _, body = raw(server.port, "POST", "/v1/embeddings", {"model": "second", "input": ask, "dimensions": dims})
        assert st == 200, body
        got = np.array([d["embedding"] for d in body["data"]], np.float32)
        np.testing.assert_array_equal(got, tokvec.load(dim=dims).embed(ask))


def test_a_large_request_is_embedded_across_the_cores_alike(server: Server, model: tokvec.Model) -> None:
    # past 16 KB of text a request is embedded by the core's parallel pass on a blocking thread, not inline
    with open(SENTENCES_TSV, encoding="utf-8") as f:
        next(f)
        rows = [line.rstrip("\n").split("\t", 1)[1] for _, line in zip(range(256), f)]
    many = [" ".join(rows[i : i + 4]) for i in range(0, 256, 4)]  # the module's service takes 64 texts at most
    assert sum(len(t.encode()) for t in many) > 16 * 1024
    with client(server.port) as c:
        r = c.embeddings.create(model="default", input=many)
    np.testing.assert_array_equal(np.array([d.embedding for d in r.data], np.float32), model.embed(many))
    assert r.usage.prompt_tokens == model.count_tokens(many).sum()


def test_usage_counts_the_tokenizers_tokens(server: Server, model: tokvec.Model, texts: list[str]) -> None:
    # the oracle is the Hugging Face tokenizer of the model (another implementation than the core's encoder)
    want = sum(len(model.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    with client(server.port) as c:
        r = c.embeddings.create(model="default", input=texts)
    assert r.usage.prompt_tokens == want > len(texts)
    assert r.usage.total_tokens == want
    assert r.usage.prompt_tokens == model.count_tokens(texts).sum()  # the public count of the same tokens


def test_models(server: Server) -> None:
    with client(server.port) as c:
        models = list(c.models.list())
    assert [m.id for m in models] == ["default", "second"]
    assert all(m.owned_by == "tokvec" for m in models)


def test_concurrent_requests_each_get_their_own_vectors(server: Server, model: tokvec.Model, texts: list[str]) -> None:
    # requests that arrive together are embedded in one core call; each must get back exactly its own rows
    asks = [texts[i % len(texts) : i % len(texts) + 1 + i % 4] for i in range(96)]

    def one(ask: list[str]) -> np.ndarray:
        st, _, body = raw(server.port, "POST", "/v1/embeddings", {"model": "default", "input": ask})
        assert st == 200, body
        return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)

    with ThreadPoolExecutor(16) as pool:
        for ask, got in zip(asks, pool.map(one, asks)):
            np.testing.assert_array_equal(got, model.embed(ask))


def _big(n: int) -> str:
    return json.dumps({"model": "default", "input": "x" * n})


BAD = [
    # (what, method, path, body, headers, key, status, code, param)
    ("no key", "POST", "/v1/embeddings", {"model": "default", "input": "a"}, {}, None, 401, "invalid_api_key", None),
    (
        "wrong key",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a"},
        {},
        "sk-wrong",
        401,
        "invalid_api_key",
        None,
    ),
    (
        "key with another scheme",
        "GET",
        "/v1/models",
        None,
        {"Authorization": f"Basic {KEY}"},
        None,
        401,
        "invalid_api_key",
        None,
    ),
    ("models without key", "GET", "/v1/models", None, {}, None, 401, "invalid_api_key", None),
    ("broken JSON", "POST", "/v1/embeddings", '{"model": "default", "input": "a"', {}, KEY, 400, "invalid_json", None),
    (
        "lone surrogate",
        "POST",
        "/v1/embeddings",
        '{"model": "default", "input": "\\ud800"}',
        {},
        KEY,
        400,
        "invalid_json",
        None,
    ),
    ("not an object", "POST", "/v1/embeddings", ["a"], {}, KEY, 400, "invalid_type", None),
    ("empty body", "POST", "/v1/embeddings", b"", {}, KEY, 400, "invalid_json", None),
    ("no input", "POST", "/v1/embeddings", {"model": "default"}, {}, KEY, 400, "missing_parameter", "input"),
    (
        "input a number",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": 3.5},
        {},
        KEY,
        400,
        "invalid_type",
        "input",
    ),
    (
        "input an object",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": {"a": 1}},
        {},
        KEY,
        400,
        "invalid_type",
        "input",
    ),
    ("empty list", "POST", "/v1/embeddings", {"model": "default", "input": []}, {}, KEY, 400, "invalid_value", "input"),
    (
        "item not a string",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": ["a", None]},
        {},
        KEY,
        400,
        "invalid_type",
        "input[1]",
    ),
    (
        "token ids",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": [15339, 1917]},
        {},
        KEY,
        400,
        "token_ids_unsupported",
        "input",
    ),
    (
        "lists of token ids",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": [[15339, 1917], [1]]},
        {},
        KEY,
        400,
        "token_ids_unsupported",
        "input",
    ),
    (
        "too many inputs",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": ["a"] * 65},
        {},
        KEY,
        400,
        "too_many_inputs",
        "input",
    ),
    (
        "text too long",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": ["a", "b" * 20001]},
        {},
        KEY,
        400,
        "text_too_long",
        "input[1]",
    ),
    ("body too large", "POST", "/v1/embeddings", _big(70000), {}, KEY, 413, "request_too_large", None),
    ("no model", "POST", "/v1/embeddings", {"input": "a"}, {}, KEY, 400, "missing_parameter", "model"),
    ("model not a string", "POST", "/v1/embeddings", {"model": 1, "input": "a"}, {}, KEY, 400, "invalid_type", "model"),
    (
        "unknown model",
        "POST",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "a"},
        {},
        KEY,
        404,
        "model_not_found",
        "model",
    ),
    (
        "encoding_format",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "encoding_format": "int8"},
        {},
        KEY,
        400,
        "invalid_value",
        "encoding_format",
    ),
    (
        "dimensions 0",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "dimensions": 0},
        {},
        KEY,
        400,
        "invalid_value",
        "dimensions",
    ),
    (
        "dimensions above dim",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "dimensions": 257},
        {},
        KEY,
        400,
        "invalid_value",
        "dimensions",
    ),
    (
        "dimensions a string",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "dimensions": "64"},
        {},
        KEY,
        400,
        "invalid_type",
        "dimensions",
    ),
    (
        "dimensions a boolean",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "dimensions": True},
        {},
        KEY,
        400,
        "invalid_type",
        "dimensions",
    ),
    (
        "user not a string",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "user": 7},
        {},
        KEY,
        400,
        "invalid_type",
        "user",
    ),
    (
        "unknown field",
        "POST",
        "/v1/embeddings",
        {"model": "default", "input": "a", "dimension": 64},
        {},
        KEY,
        400,
        "unknown_parameter",
        "dimension",
    ),
    (
        "form body",
        "POST",
        "/v1/embeddings",
        "input=a",
        {"Content-Type": "application/x-www-form-urlencoded"},
        KEY,
        415,
        "unsupported_media_type",
        None,
    ),
    ("GET embeddings", "GET", "/v1/embeddings", None, {}, KEY, 405, "method_not_allowed", None),
    ("POST health", "POST", "/health", {}, {}, KEY, 405, "method_not_allowed", None),
    ("unknown path", "GET", "/v1/completions", None, {}, KEY, 404, "not_found", None),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_their_4xx_in_openais_shape(server: Server, case: tuple) -> None:
    _, method, path, body, headers, key, status, code, param = case
    st, hdrs, got = raw(server.port, method, path, body, headers, key=key)
    assert st == status, got
    assert set(got) == {"error"}
    err = got["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["code"] == code and err["param"] == param
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    if status == 401:
        assert hdrs["www-authenticate"] == "Bearer"
    if status == 405:
        assert hdrs["allow"] in ("GET", "POST")
    # and the service still answers
    st, _, ok = raw(server.port, "POST", "/v1/embeddings", {"model": "default", "input": "still here"})
    assert st == 200 and len(ok["data"]) == 1


def test_the_openai_client_raises_on_errors(server: Server) -> None:
    with client(server.port, key="sk-wrong") as c, pytest.raises(openai.AuthenticationError):
        c.embeddings.create(model="default", input="a")
    with client(server.port) as c, pytest.raises(openai.NotFoundError, match="no model named"):
        c.embeddings.create(model="text-embedding-3-small", input="a")
    with client(server.port) as c, pytest.raises(openai.BadRequestError, match="token ids"):
        c.embeddings.create(model="default", input=[[1, 2, 3]])


def _open(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head)
    return s


def _answer(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the body"
        rest += chunk
    return int(head.split(b" ")[1]), rest


def _head(length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\n{size}{extra}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("head", "json_error"),
    [
        (b"POST /v1/embeddings HTTP/1.1 extra\r\nHost: x\r\n\r\n", False),  # a malformed request line
        (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\nContent-Length: 2\r\n\r\n{}", False),
        (_head(None) + b"zz\r\n{}\r\n0\r\n\r\n", True),  # a chunk size that is not hexadecimal
    ],
    ids=["request line", "header name", "chunk size"],
)
def test_unreadable_http_gets_a_400_and_the_connection_closed(server: Server, head: bytes, json_error: bool) -> None:
    # a head the HTTP parser cannot read is answered by it (hyper: a bare 400) before any request exists; a body that
    # breaks HTTP/1.1 is found while the request reads it, and answered in OpenAI's error shape
    s = _open(server.port, head)
    try:
        status, body = _answer(s)
        assert s.recv(1) == b""  # closed: nothing after a broken request can be trusted
    finally:
        s.close()
    assert status == 400
    if json_error:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "bad_http", err
        assert err["message"].startswith("the request is not valid HTTP/1.1: ")
        assert "chunk size" in err["message"]
    else:
        assert body == b""
    st, _, ok = raw(server.port, "POST", "/v1/embeddings", {"model": "default", "input": "still here"})
    assert st == 200 and len(ok["data"]) == 1


def test_a_stalled_client_blocks_no_one_and_times_out(server: Server, model: tokvec.Model) -> None:
    body = json.dumps({"model": "default", "input": "a text sent slowly"}).encode()
    stalled = _open(server.port, _head(len(body)) + body[:10])
    try:
        # while it holds its connection, others are answered
        with client(server.port) as c:
            r = c.embeddings.create(model="default", input=["others are answered"], encoding_format="float")
        np.testing.assert_array_equal(np.array(r.data[0].embedding, np.float32), model.embed("others are answered"))
        # and it gets a 408 when the rest of its body does not come within --read-timeout
        status, got = _answer(stalled)
        assert status == 408
        assert json.loads(got)["error"]["code"] == "request_timeout"
    finally:
        stalled.close()


def test_a_chunked_body_past_the_limit_is_refused(server: Server) -> None:
    # no Content-Length to refuse it by: the limit is counted as the chunks arrive
    s = _open(server.port, _head(None))
    try:
        chunk = b"x" * 30000
        for _ in range(3):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, got = _answer(s)
    finally:
        s.close()
    assert status == 413
    assert json.loads(got)["error"]["code"] == "request_too_large"


def test_a_client_that_vanishes_hurts_no_one(server: Server) -> None:
    for part in (b"", b'{"model": "def'):
        s = _open(server.port, _head(100) + part)
        s.close()
    st, _, ok = raw(server.port, "POST", "/v1/embeddings", {"model": "default", "input": ["x", "y"]})
    assert st == 200 and len(ok["data"]) == 2


def test_metrics(server: Server) -> None:
    raw(server.port, "POST", "/v1/embeddings", {"model": "second", "input": ["one text", "two texts"]})
    st, hdrs, text = raw(server.port, "GET", "/metrics", key=None)
    assert st == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    values: dict[str, float] = {}
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            name, v = line.rsplit(" ", 1)
            values[name] = float(v)
    assert values['tokvec_requests_total{endpoint="/v1/embeddings",status="200"}'] >= 1
    assert values['tokvec_texts_total{model="second"}'] >= 2
    assert values['tokvec_tokens_total{model="second"}'] >= 3
    assert values["tokvec_requests_in_flight"] == 1  # this request
    assert (
        values['tokvec_request_duration_seconds_bucket{le="+Inf"}'] == values["tokvec_request_duration_seconds_count"]
    )
    buckets = [v for k, v in values.items() if k.startswith("tokvec_request_duration_seconds_bucket")]
    assert buckets == sorted(buckets)


@pytest.mark.parametrize("threads", [1, 2])
def test_sigterm_drains_the_request_in_flight_and_exits_0(model: tokvec.Model, threads: int) -> None:
    s = Server(["--api-key", KEY, "--threads", str(threads)])
    body = json.dumps({"model": "default", "input": ["in flight at SIGTERM"], "encoding_format": "float"}).encode()
    # a GET, then the POST's head and the start of its body, in one write on one connection: HTTP/1.1 answers them in
    # order, so once the GET is answered, the service has the POST in flight
    conn = _open(s.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + _head(len(body)) + body[:20])
    try:
        assert _answer(conn)[0] == 200
        s.proc.send_signal(signal.SIGTERM)
        # once the listener is closed, the service is draining
        while True:
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=60).close()
            except (ConnectionRefusedError, ConnectionResetError):  # reset: it closed with this one in its queue
                break
        conn.sendall(body[20:])
        status, got = _answer(conn)
    finally:
        conn.close()
    assert status == 200
    vec = np.array(json.loads(got)["data"][0]["embedding"], np.float32)
    np.testing.assert_array_equal(vec, model.embed("in flight at SIGTERM"))
    _, err = s.proc.communicate(timeout=60)
    assert s.proc.returncode == 0, err
    assert "stopped (SIGTERM)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-inputs", "0"], "--max-inputs must be an integer >= 1"),
        (["--read-timeout", "0"], "--read-timeout must be > 0"),
        (["--port", "70000"], "--port must be in [0, 65535]"),
        (["--threads", "0"], "--threads must be in [1, 1024]"),
        (["--api-key", " "], "the API key is empty"),
        (["--model", "a=x", "--model", "a=y"], "two models are named 'a'"),
        (["--model", "m=/nonexistent/model"], "/nonexistent/model"),
    ],
)
def test_bad_flags_are_refused_before_listening(args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tokvec", "serve", "--port", "0", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "listening" not in r.stderr


def test_only_loopback_counts_as_private() -> None:
    # a service on another address without a key gets a warning at start (main); these decide when
    from tokvec.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("::")
