"""`kubectl port-forward` to the hub's Service, kept up for as long as tap runs.

A port-forward dies with the pod behind it (a hub restart, a node drain) or a broken connection
to the API server. The forward is restarted on the *same* local port, so the URL the TUI holds
stays valid and the TUI's own reconnect (it shows "reconnecting") finds the hub again. kubectl
is used rather than the client library's stream API: it is what users already have and trust for
this, and it honours the same kubeconfig and context.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import threading
import time

log = logging.getLogger("podshark.tap")

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)  # seconds between restarts, then the last one repeated


class ForwardError(Exception):
    """The forward could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PortForward:
    """`kubectl port-forward svc/podshark-hub LOCAL:8898`, restarted when it exits."""

    def __init__(
        self,
        namespace: str,
        *,
        target: str = "svc/podshark-hub",
        remote_port: int = 8898,
        local_port: int | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        kubectl: str | None = None,
        scheme: str = "http",
    ) -> None:
        """`scheme`: what the hub serves ("https" with TLS), for `url`."""
        found = kubectl or shutil.which("kubectl")
        if not found:
            raise ForwardError("kubectl is not on PATH: install it (podshark tap port-forwards with it)")
        self.kubectl = found
        self.namespace = namespace
        self.target = target
        self.remote_port = remote_port
        self.local_port = local_port or free_port()
        self.kubeconfig = kubeconfig
        self.context = context
        self.scheme = scheme
        self.restarts = 0
        self._proc: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.local_port}"

    def argv(self) -> list[str]:
        argv = [self.kubectl]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        if self.context:
            argv += ["--context", self.context]
        return [
            *argv,
            "-n",
            self.namespace,
            "port-forward",
            "--address",
            "127.0.0.1",
            self.target,
            f"{self.local_port}:{self.remote_port}",
        ]

    def start(self, timeout: float = 30.0) -> PortForward:
        """Start, and wait until the first forward listens (ForwardError with kubectl's words if not)."""
        self._thread = threading.Thread(target=self._run, name="podshark-port-forward", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise ForwardError(
                f"kubectl port-forward to {self.target} did not start within {timeout:.0f}s"
                + (f": {self.last_error}" if self.last_error else "")
            )
        return self

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    self.argv(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                )
            except OSError as e:
                self.last_error = str(e)
                return
            self._proc = proc
            assert proc.stdout is not None
            for line in proc.stdout:
                if FORWARDING.search(line):
                    self._ready.set()
                    attempt = 0
                elif line.strip() and not line.startswith("Handling connection"):
                    self.last_error = line.strip()
                    log.warning("port-forward: %s", line.strip())
            proc.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            if time.monotonic() - started > 30:
                attempt = 0
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            attempt += 1
            log.warning(
                "port-forward to %s ended (%s); restarting in %.1fs", self.target, self.last_error, delay
            )
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(5)
