"""`tokvec serve`: an embedding service that speaks OpenAI's `/v1/embeddings`, so the clients pipelines already use
(the `openai` package, LangChain's and LlamaIndex's OpenAI embeddings, vector databases' ingest tools) call a tokvec
model. Endpoints: POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics (Prometheus text).

The HTTP service itself is in the core (`tokvec._core.Server`, rust/serve.rs: hyper on a tokio runtime, every
request read, checked, embedded and answered in Rust on every core, no GIL); docs/serve.md has the measurement that
chose it. This module checks the flags, loads the models, binds the socket, and stops the service on SIGTERM or
SIGINT after draining it. Not imported by `import tokvec`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from tokvec import _core
from tokvec.model import Model, load

__all__ = ["Limits", "main", "parse_models", "run"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for; beyond it the request gets a 4xx (docs/serve.md lists the defaults)."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048
    max_text_chars: int = 100_000
    read_timeout: float = 30.0

    def check(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_text_chars"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
        if not 0 < self.read_timeout <= 86_400:
            raise ValueError(f"--read-timeout must be > 0 seconds (and at most a day), got {self.read_timeout}")


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
    return sock


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _threads() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset limits), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(
    models: dict[str, Model],
    sock: socket.socket,
    *,
    paths: dict[str, str | None],
    api_key: str | None = None,
    limits: Limits | None = None,
    threads: int | None = None,
    drain_timeout: float = 30.0,
    access_log: bool = False,
) -> int:
    """Serves `models` (name -> loaded model; `paths` says what each was loaded from, to load a `dimensions`
    variant with `load(path, dim=N)` on first use) on the listening socket `sock`, which the service takes over,
    until SIGTERM or SIGINT; then stops accepting connections, lets the requests in flight finish (at most
    `drain_timeout` seconds) and returns the number of /v1/embeddings requests answered."""
    limits = limits or Limits()
    limits.check()

    def variant(name: str, dims: int) -> Any:
        return load(paths[name], dim=dims)._core

    stops: list[int] = []

    def stopped(signum: int, frame: Any) -> None:
        stops.append(signum)

    old = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = _core.Server(
            sock.detach(),
            [(name, m._core) for name, m in models.items()],
            loader=variant,
            api_key=api_key,
            max_body_bytes=limits.max_body_bytes,
            max_inputs=limits.max_inputs,
            max_text_chars=limits.max_text_chars,
            read_timeout=limits.read_timeout,
            threads=threads or _threads(),
            access_log=access_log,
            created=int(time.time()),
        )
        # the signal handlers run between these waits (the GIL is released while waiting)
        while not stops and server.wait(0.05) is None:
            pass
        server.stop(drain_timeout)
        while server.wait(0.05) is None:
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    why = f" ({signal.Signals(stops[0]).name})" if stops else ""
    answered = server.answered
    print(f"tokvec serve: stopped{why}; {answered} /v1/embeddings requests answered", file=sys.stderr)
    return answered


def main(args: Any) -> None:
    """`tokvec serve` from its parsed arguments: everything is checked and every model loaded before the socket
    is opened."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}
    limits = Limits(**{k: v for k, v in given.items() if v is not None})
    limits.check()
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    if not 0 <= args.drain_timeout <= 86_400:
        raise ValueError(f"--drain-timeout must be in [0, 86400] seconds, got {args.drain_timeout}")
    threads = args.threads if args.threads is not None else _threads()
    if not 1 <= threads <= 1024:
        raise ValueError(f"--threads must be in [1, 1024], got {threads}")
    key = args.api_key if args.api_key is not None else os.environ.get("TOKVEC_API_KEY")
    if key is not None and not key.strip():
        raise ValueError("the API key is empty; give a non-empty --api-key or TOKVEC_API_KEY, or neither")
    if key is not None and (key != key.strip() or not key.isascii() or not key.isprintable()):
        raise ValueError(
            "the API key must be printable ASCII without spaces at either end (it travels in an HTTP header)"
        )
    paths = dict(parse_models(args.model))
    models = {name: load(path) for name, path in paths.items()}
    if key is None and not _loopback(args.host):
        print(
            f"tokvec serve: warning: listening on {args.host} without an API key: anyone who reaches this port can "
            f"use the service (set --api-key or TOKVEC_API_KEY)",
            file=sys.stderr,
        )
    sock = bind(args.host, args.port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    names = ", ".join(f"{n} (dim {m.dim})" for n, m in models.items())
    print(
        f"tokvec serve: listening on http://{shown}:{bound[1]}/v1/embeddings; models: {names}; {threads} threads",
        file=sys.stderr,
        flush=True,
    )
    run(
        models,
        sock,
        paths=paths,
        api_key=key,
        limits=limits,
        threads=threads,
        drain_timeout=args.drain_timeout,
        access_log=args.access_log,
    )
