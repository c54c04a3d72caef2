#!/usr/bin/env python3
"""Run a command (pytest, a benchmark) under a hang guard that tells what hung.

    python3 scripts/hang_guard.py [--timeout 300] [--after-summary 30] -- python3 -m pytest ...

The command runs in its own process group with stdout+stderr merged and copied
line by line to our stdout. It is declared hung when
  * it is still alive --after-summary seconds after printing pytest's closing
    line ("N passed, M skipped in 1.2s", "no tests ran"): a hang at exit, or
    (--summary REGEX names another closing line), or
  * it runs past --timeout seconds.
Then, before killing it, we print
  1. the Python stack of every thread (SIGUSR1, sent only when the process
     catches it: python/tests/conftest.py registers faulthandler for it),
  2. every thread's name, state and kernel wait channel (/proc/PID/task/*),
     and the kernel stack where readable,
  3. native stacks of all threads: gdb -batch -p PID -ex 'thread apply all bt'
     (gdb, else cuda-gdb, which the GPU image has; bounded by --gdb-timeout),
  4. the process tree under it (compile workers and the like),
and end the process group (SIGTERM, then SIGKILL). Exit status: the command's
own, or 124 when the guard had to kill it (125 when the tests had already
reported and only the exit hung).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

SUMMARY = re.compile(r"(\b\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.* in [0-9.]+s)|no tests ran")


def say(msg: str) -> None:
    sys.stdout.write(f"[hang_guard {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stdout.flush()


def read(path: str, default: str = "?") -> str:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().strip()
    except OSError as e:
        return f"{default} ({e.strerror})"


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read(f"/proc/{entry}/stat", "")
        try:
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def threads_report(pid: int, kernel_stacks: bool = True) -> None:
    tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int) if os.path.isdir(f"/proc/{pid}/task") else []
    say(f"pid {pid} ({read(f'/proc/{pid}/cmdline').replace(chr(0), ' ')[:200]}): {len(tasks)} threads")
    for tid in tasks:
        base = f"/proc/{pid}/task/{tid}"
        stat = read(f"{base}/stat", "")
        state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
        print(f"  tid {tid:>7}  {read(base + '/comm'):<16} state {state}  wchan {read(base + '/wchan')}")
        if kernel_stacks:
            stack = read(f"{base}/stack", "")
            if stack and not stack.startswith(" ("):
                for line in stack.splitlines()[:12]:
                    print(f"      {line}")
    sys.stdout.flush()


def native_stacks(pid: int, timeout: int) -> None:
    gdb = shutil.which("gdb") or shutil.which("cuda-gdb")
    if not gdb:
        say("no gdb / cuda-gdb here: native stacks unavailable (the /proc wait channels above are what we have)")
        return
    say(f"native stacks via {gdb} (up to {timeout} s):")
    cmd = [gdb, "-batch", "-nx", "-p", str(pid), "-ex", "set pagination off", "-ex", "info threads",
           "-ex", "thread apply all bt 40"]
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True,
                           errors="replace")
        sys.stdout.write(r.stdout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        sys.stdout.write(out)
        say(f"{os.path.basename(gdb)} timed out after {timeout} s")
    sys.stdout.flush()


def catches(pid: int, sig: int) -> bool:
    """Does the process have a handler for sig (SigCgt in /proc/PID/status)?"""
    for line in read(f"/proc/{pid}/status", "").splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def diagnose(proc: subprocess.Popen, why: str, gdb_timeout: int) -> None:
    pid = proc.pid
    say(f"HUNG: {why}. Diagnostics of pid {pid} follow, then it is killed.")
    if catches(pid, signal.SIGUSR1):
        say("Python stacks (SIGUSR1 -> faulthandler, all threads):")
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            return
        time.sleep(3)
    else:
        say("no SIGUSR1 handler in it (faulthandler.register): no Python stacks, native ones follow")
    threads_report(pid)
    todo, seen = children(pid), set()
    while todo:
        kid = todo.pop()
        if kid in seen:
            continue
        seen.add(kid)
        say(f"child process {kid} of the tree:")
        threads_report(kid, kernel_stacks=False)
        todo.extend(children(kid))
    if proc.poll() is None:
        native_stacks(pid, gdb_timeout)


def kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=300, help="seconds for the whole command")
    ap.add_argument("--after-summary", type=float, default=30,
                    help="seconds the command may live on after printing its closing summary line")
    ap.add_argument("--summary", default=None,
                    help="regex of the command's closing line (default: pytest's summary line)")
    ap.add_argument("--gdb-timeout", type=int, default=60)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given")
    summary_re = re.compile(a.summary) if a.summary else SUMMARY
    t0 = time.monotonic()
    env = dict(os.environ, FLASHATTN_EXIT_TRACE="1", PYTHONUNBUFFERED="1")  # see python/tests/conftest.py
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    summary_at = [None]

    def pump():
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if summary_at[0] is None and summary_re.search(line):
                summary_at[0] = time.monotonic()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    rc = None
    while rc is None:
        try:
            rc = proc.wait(0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if summary_at[0] is not None and now - summary_at[0] > a.after_summary:
            diagnose(proc, f"still alive {a.after_summary:.0f} s after its summary line (a hang at exit)",
                     a.gdb_timeout)
            kill_group(proc)
            rc = 125
        elif now - t0 > a.timeout:
            diagnose(proc, f"still running after {a.timeout:.0f} s (--timeout)", a.gdb_timeout)
            kill_group(proc)
            rc = 124
    if rc not in (124, 125):
        try:  # processes of the group that outlived the command (compile workers, ...)
            os.killpg(proc.pid, 0)
            say("processes of the command's group outlived it; ending them")
            kill_group(proc)
        except (ProcessLookupError, PermissionError):
            pass
    reader.join(5)
    if summary_at[0] is not None and rc not in (124, 125):
        say(f"exited rc={rc} {time.monotonic() - summary_at[0]:.1f} s after its summary line")
    return rc


if __name__ == "__main__":
    sys.exit(main())
