"""Ctrl-C and SIGTERM stop a long kernel: the search and clustering kernels run on a worker thread while the
calling thread runs Python's signal handlers, so the exception a handler raises surfaces from the kernel call
(instead of after the kernel has finished, minutes later).

Each case runs in a child process that starts a call taking far longer than the test waits (all-pairs work on
400,000 random unit vectors, which no pruning helps), signals it, and must exit with the handler's exception
raised from that call. The safety timeout on the wait is generous; nothing asserts how fast the stop is.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import default_signals

#: The child: random unit vectors, an optional signal set-up, then one long call.
CHILD = """
import signal, sys
import numpy as np
import tokvec

rng = np.random.default_rng(0)
E = rng.standard_normal((400_000, 64), dtype=np.float32)
E /= np.linalg.norm(E, axis=1, keepdims=True)
{setup}
print("kernel starts", flush=True)
{call}
print("kernel finished", flush=True)
"""

#: A SIGTERM handler that raises an exception of the child's own.
TERM_HANDLER = """
class Terminated(Exception):
    pass

def on_term(signum, frame):
    raise Terminated(f"signal {signum}")

signal.signal(signal.SIGTERM, on_term)
"""

#: (the call, the line of tokvec's code that calls the kernel, as the traceback shows it)
CALLS = {
    "dedup_indices": ("tokvec.dedup_indices(E, 0.9)", "return _core.dedup(e, t)"),
    "duplicate_pairs": ("tokvec.duplicate_pairs(E, 0.9)", "_core.duplicate_pairs(e, t)"),
    "dedup_reference": ("tokvec.dedup.dedup(E[:200_000], 0.9, reference=E[200_000:])", "_core.duplicate_pairs_cross("),
    "topk": ("tokvec.topk(E[:100_000], E, k=5)", "_core.topk(q, c, kk)"),
    "kmeans": ("tokvec.kmeans(E, 2000, n_init=1)", "_core.kmeans("),
    "dedup_binary": ("tokvec.dedup_indices(np.packbits(E > 0, axis=1).view(np.uint64), 0.9)", "_core.dedup_binary("),
}


def run_and_signal(call: str, sig: int, setup: str = "") -> subprocess.CompletedProcess[str]:
    """Starts the child, waits until it is inside `call`, sends `sig`, and waits for it to exit."""
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(setup=setup, call=call)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # noqa: PLW1509
    )
    try:
        line = p.stdout.readline() if p.stdout else ""
        if line != "kernel starts\n":
            p.kill()
            _, err = p.communicate()
            pytest.fail(f"the child did not start the call: {line!r}\n{err}")
        # the call's Python checks take milliseconds; after this pause it is inside the kernel
        time.sleep(1.5)
        p.send_signal(sig)
        out, err = p.communicate(timeout=180)  # a safety net only: a stopped kernel exits at once
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"{call}: still running 180 s after the signal")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_ctrl_c_stops_the_kernel(name):
    call, kernel_line = CALLS[name]
    r = run_and_signal(call, signal.SIGINT)
    assert "kernel finished" not in r.stdout, f"{name} ended before the signal; make its input larger"
    # an uncaught KeyboardInterrupt ends CPython by re-raising SIGINT
    assert r.returncode == -signal.SIGINT, (r.returncode, r.stderr)
    assert r.stderr.rstrip().endswith("KeyboardInterrupt"), r.stderr
    assert kernel_line in r.stderr, f"the KeyboardInterrupt must come from the kernel call:\n{r.stderr}"


def test_sigterm_handler_exception_surfaces_from_the_kernel():
    call, kernel_line = CALLS["dedup_indices"]
    r = run_and_signal(call, signal.SIGTERM, setup=TERM_HANDLER)
    assert "kernel finished" not in r.stdout
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.rstrip().endswith(f"Terminated: signal {int(signal.SIGTERM)}"), r.stderr
    assert kernel_line in r.stderr, r.stderr
