"""`Demo`: build the demo network, start the services in it, wait until traffic flows; stop it all.

Start order: the network (`podshark.demo.netns`), then dns, api, inventory and frontend together
(each reports ready once it serves), then loadgen, which reports ready after its first request
that went all the way through (frontend -> dns, api, inventory). So when `start` returns, the
workload is really running; when anything fails it stops what was started and raises `DemoError`
quoting the failing service's log. `stop` is idempotent and also runs when `start` fails, and
`cleanup_stale` (run by `start`, and by ``python -m podshark.demo --cleanup``) removes what a
killed demo left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import podshark
from podshark.demo.config import DemoConfig, check_settings
from podshark.demo.netns import NetError, Network, cleanup_stale, ip, ip_binary, leftovers
from podshark.demo.runtime import release
from podshark.demo.topology import Topology

SERVERS = ("dns", "api", "inventory", "frontend")  # started together; loadgen after them
READY_TIMEOUT = 45.0  # a cold start on a busy 2-core machine imports grpcio in four processes at once
STOP_GRACE = 3.0
LOG_TAIL = 1500  # characters of a service's log quoted in an error


class DemoError(RuntimeError):
    """The demo could not start (or a requirement is missing); the text says what to do."""


def requirements_missing() -> str | None:
    """Why `podshark demo` cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "podshark demo needs root (it creates network namespaces): run it with sudo"
    if ip_binary() is None:
        return "podshark demo needs iproute2 (apt-get install iproute2)"
    probe = ip("netns", "list", check=False)
    if probe.returncode != 0:
        return f"podshark demo needs network namespaces, but `ip netns list` failed: {probe.stderr.strip()}"
    if importlib.util.find_spec("grpc") is None:
        return "podshark demo needs grpcio for its gRPC service (pip install grpcio)"
    return None


class Demo:
    """The demo workload. Use as a context manager, or call `start` and (always) `stop`."""

    def __init__(
        self,
        *,
        rate: float = 5.0,
        workdir: Path | None = None,
        error_rate: float = 0.02,
        dns_backend: str = "auto",
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        check_settings(rate, error_rate, dns_backend)
        self.rate = rate
        self.error_rate = error_rate
        self.dns_backend = dns_backend
        self.ready_timeout = ready_timeout
        self._given_workdir = workdir
        self.workdir: Path | None = None
        self._network: Network | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self.cleaned: list[str] = []  # what start()'s cleanup_stale removed (for the caller to report)

    # --- what the caller reads --------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        """This run's services, addresses and edges (available once `start` has chosen them)."""
        if self._network is None:
            raise DemoError("the demo has not been started: call start() first")
        return self._network.topology

    def interfaces(self) -> list[str]:
        """Host ends of the pods' veths: what the worker captures (each packet crosses two of them)."""
        return self.topology.host_interfaces()

    @property
    def bridge(self) -> str:
        """The bridge joining the pods: captured alone (promiscuous), it sees each packet once."""
        return self.topology.bridge

    def pids(self) -> dict[str, int]:
        """Service name -> pid of its process (dns: the supervisor; dnsmasq is its child)."""
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, *, hold_traffic: bool = False) -> None:
        """Build the network, start every service, return once a request went through end to end.

        Then loadgen sends its steady traffic — at once, or, with `hold_traffic`, only after
        `release_traffic`: a caller that starts capturing in between sees every conversation from
        its first packet (a gRPC connection joined half-way cannot be decoded, see `frontend`).
        """
        reason = requirements_missing()
        if reason:
            raise DemoError(reason)
        with self._lock:
            if self._network is not None or self._stopped:
                raise DemoError("this demo was already started (a Demo runs once: make a new one)")
            atexit.register(self.stop)  # an interpreter that exits without stop() still cleans up
            try:
                self.cleaned = cleanup_stale()
                self._network = Network.allocate()
                self._prepare_workdir()
                self._network.create()
            except BaseException as e:  # Ctrl-C included: never leave a half-built network behind
                self._stop_locked()
                if isinstance(e, NetError | OSError):
                    raise DemoError(f"could not build the demo network: {e}") from e
                raise
        try:
            for name in SERVERS:
                self._spawn(name)
            self._wait_ready(SERVERS)
            assert self.workdir is not None
            if not hold_traffic:
                release(self.workdir)
            self._spawn("loadgen")
            self._wait_ready(("loadgen",))
        except BaseException:
            self.stop()
            raise

    def release_traffic(self) -> None:
        """Let loadgen go after ``start(hold_traffic=True)`` (harmless when it already goes)."""
        if self.workdir is None or self._stopped:
            raise DemoError("the demo is not running: call start() first")
        release(self.workdir)

    def stop(self) -> None:
        """End the services and remove the network and the state; idempotent, never raises for leftovers."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        # loadgen first, so no new request heads for a service that is going away; then the rest
        loadgen = {n: p for n, p in self._procs.items() if n == "loadgen"}
        others = {n: p for n, p in self._procs.items() if n != "loadgen"}
        for group in (loadgen, others):
            for proc in group.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            for proc in group.values():
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()
        if self._network is not None:
            with contextlib.suppress(NetError, OSError):
                self._network.teardown()
        if self.workdir is not None and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def leftovers(self) -> list[str]:
        """What of this run still exists (namespaces, links); empty after `stop`."""
        return leftovers(self._network.topology.prefix) if self._network is not None else []

    def __enter__(self) -> Demo:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        assert self._network is not None
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"podshark-demo-{self._network.topology.prefix}-"))
            self._network.note_workdir(self.workdir)
        # services run as root but read it after `ip netns exec`; a stale ready/ would fake readiness
        shutil.rmtree(self.workdir / "ready", ignore_errors=True)
        (self.workdir / "ready").mkdir()
        (self.workdir / "logs").mkdir(exist_ok=True)
        DemoConfig(self._network.topology, self.rate, self.error_rate, self.dns_backend).write(self.workdir)

    def _spawn(self, name: str) -> None:
        with self._lock:  # never while stop() runs: it would miss this process
            if self._stopped:
                raise DemoError("the demo was stopped while it was starting")
            self._spawn_locked(name)

    def _spawn_locked(self, name: str) -> None:
        assert self._network is not None and self.workdir is not None
        service = self._network.topology.service(name)
        argv = [
            sys.executable,
            "-m",
            "podshark.demo.serve",
            "--workdir",
            str(self.workdir),
            "--service",
            name,
            "--parent",
            str(os.getpid()),
        ]
        env = dict(os.environ)
        # the services import podshark from wherever this process did (a checkout or an install)
        root = str(Path(podshark.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy", "all_proxy"):
            env.pop(proxy, None)  # pods talk to each other directly
        with open(self.workdir / "logs" / f"{name}.log", "ab") as log:
            self._procs[name] = subprocess.Popen(
                self._network.exec_args(service.namespace, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                # a Ctrl-C in the terminal reaches only the demo, which stops the services in order
                start_new_session=True,
            )

    def _wait_ready(self, names: tuple[str, ...]) -> None:
        workdir = self.workdir  # a concurrent stop() resets the attribute
        assert workdir is not None
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(names)
        while waiting:
            for name in list(waiting):
                if (workdir / "ready" / name).exists():
                    waiting.remove(name)
                    continue
                proc = self._procs.get(name)
                if proc is None:
                    raise DemoError("the demo was stopped while it was starting")
                code = proc.poll()
                if code is not None:
                    tail = self._log_tail(name)
                    raise DemoError(f"demo service {name} exited with {code} while starting{tail}")
            if waiting and time.monotonic() > deadline:
                raise self._not_ready(waiting)
            time.sleep(0.05)

    def _not_ready(self, waiting: list[str]) -> DemoError:
        hint = ""
        if "loadgen" in waiting and _bridge_filtered():
            hint = (
                "\nbridged traffic passes this host's iptables FORWARD chain (br_netfilter is loaded); "
                "if its policy is DROP (Docker sets that), allow the demo bridge: "
                f"iptables -I FORWARD -i {self.bridge} -o {self.bridge} -j ACCEPT"
            )
        tails = "".join(self._log_tail(n) for n in waiting)
        late = ", ".join(waiting)
        return DemoError(f"demo service(s) {late} not ready within {self.ready_timeout:g}s{tails}{hint}")

    def _log_tail(self, name: str) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return f"\n--- {name} log (last lines) ---\n{text[-LOG_TAIL:]}" if text else ""


def _bridge_filtered() -> bool:
    try:
        return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False
