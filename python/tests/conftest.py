import atexit
import faulthandler
import importlib.util
import os
import re
import signal
import sys
import threading
import time

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

# --- exit hygiene --------------------------------------------------------------
# Set before torch / jax are imported (flashattn imports torch):
#  * Inductor compiles in-process: its default SubprocPool (a sidecar process and
#    forked workers) is shut down by an atexit handler that waits on the sidecar
#    for up to 300 s and is a known source of hangs at interpreter exit.
#  * JAX does not grab 75% of the GPU at its first GPU call (torch runs next).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Python stacks of every thread on SIGUSR1 (scripts/hang_guard.py sends it before
# it kills a hung run). fd 2 is the real stderr again once pytest stops capturing.
if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


# Progress lines of the interpreter's exit on stderr, after pytest's summary: only
# where asked for (scripts/hang_guard.py sets FLASHATTN_EXIT_TRACE=1), so pytest's
# closing line stays the last line of a plain run.
_TRACE = os.environ.get("FLASHATTN_EXIT_TRACE", "") not in ("", "0")


def _exit_trace(msg):
    if not _TRACE:
        return
    try:
        os.write(2, f"[flashattn tests: exit {time.strftime('%H:%M:%S')}] {msg}\n".encode())
    except OSError:
        pass


# Registered before anything else of the session, so it runs last of Python's
# atexit handlers: past this line only module teardown and native destructors run.
atexit.register(_exit_trace, "Python atexit handlers done (left: module teardown, native destructors)")


def pytest_configure(config):
    # Known marker even where pytest-timeout is not installed (it is then inert).
    config.addinivalue_line("markers", "timeout(seconds, method): per-test time limit (pytest-timeout)")


def _children():
    """Processes whose parent is this one (Linux /proc), as 'pid name'."""
    me, kids = str(os.getpid()), []
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                name, rest = stat[stat.find("(") + 1:stat.rfind(")")], stat[stat.rfind(")") + 2:].split()
                if len(rest) > 1 and rest[1] == me:
                    kids.append(f"{entry} {name}")
    except OSError:
        pass
    return kids


def _runtimes():
    """The CUDA and OpenMP runtime libraries mapped in this process (two of one kind = two copies)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if re.search(r"/lib(cudart|gomp|iomp5|omp)[^/]*\.so", p))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # What may keep the interpreter from exiting: threads it must join (non-daemon),
    # CUDA work in flight. Synchronize while every runtime is still alive.
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        try:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            _exit_trace(f"torch.cuda.synchronize at exit failed: {e}")
    live = [f"{t.name}{'' if t.daemon else ' (NON-daemon: joined at exit)'}" for t in threading.enumerate()
            if t is not threading.main_thread()]
    _exit_trace(f"pytest done; Python threads alive: {live or 'none'}; child processes: {_children() or 'none'}")
    _exit_trace(f"runtimes mapped in this process: {_runtimes() or 'none'}")
    pools = getattr(sys.modules.get("torch._inductor.async_compile"), "_pool_set", None)
    if pools:
        _exit_trace(f"torch inductor compile-worker pools alive: {len(pools)} (shut down by an atexit handler "
                    "that waits up to 300 s for each)")
    atexit.register(_exit_trace, "non-daemon threads joined; Python atexit handlers start")
    # If the exit hangs, dump every thread's Python stack after a while (cancelled
    # automatically when the interpreter gets to its final teardown).
    delay = float(os.environ.get("FLASHATTN_EXIT_DUMP_S", "20"))
    if delay > 0:
        faulthandler.dump_traceback_later(delay, exit=False, file=sys.__stderr__)


def pytest_report_header(config):
    import flashattn

    lines = [f"flashattn {flashattn.__version__}: CUDA compiled={flashattn.cuda_compiled()}, "
             f"devices={flashattn.cuda_device_count()}"]
    if not HAS_TORCH:
        lines.append("torch not installed: the torch tests (autograd, torch.compile, CUDA parity) are SKIPPED")
    return lines


def pytest_terminal_summary(terminalreporter):
    if not HAS_TORCH:
        terminalreporter.write_line("NOTE: torch not installed: torch tests skipped (numpy CPU tests ran)",
                                    yellow=True)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
