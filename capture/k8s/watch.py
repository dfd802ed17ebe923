"""List and watch the Kubernetes objects that give traffic its identity, and hand every change to a sink.

    api = load_api_client(kubeconfig="/etc/podshark/kubeconfig")    # or None: in-cluster ServiceAccount
    w = Watcher(api, index, selectors={"Pod": Selector.for_node("node-a")})
    w.start()
    w.wait_synced(30)            # every served kind listed once
    ...
    w.stop()                     # shuts the watch sockets down; threads end within a second or so

The sink (the identity index) receives plain dicts in the API's JSON shape:

    sink.replace(kind, objs, ts_ns)               # after every (re)list: the complete set for that kind
    sink.apply(kind, event_type, obj, ts_ns)      # ADDED / MODIFIED / DELETED, in the server's order

`kind` is the object kind actually watched ("Pod", "Endpoints", "EndpointSlice"...), `ts_ns` the wall
clock (time.time_ns) when the change reached us: calls carry wall-clock timestamps, so an index that
keeps each IP's owners with time ranges can compare the two. The Watcher calls the sink from one
thread at a time (it holds a lock around each call), so ordering across kinds is the order of arrival
and the sink needs no locking against the Watcher itself.

Why raw JSON and not the client's models: for a typical 2.3 KB Pod, `json.loads` costs 37-55 µs,
building the client's V1Pod model 320-350 µs, and turning that back into a dict
(`sanitize_for_serialization`) another ~415 µs: 14-20x more per object, on every event and relist
(2-core VM, 2000-pod list). The index wants dicts anyway, and this client (v37) has no models for
batch/v1beta1 CronJobs, which a v1.20 server still serves. So requests go through
`ApiClient.param_serialize` / `call_api` (auth, TLS, token refresh as usual) and bodies are parsed
with `json.loads`.

Watch semantics are those of client-go's reflector:

* The first list is served from the API server's watch cache (`resourceVersion=0`), the cheap read a
  DaemonSet on every node must use; a list after `410 Gone` is a consistent, paginated read.
* The watch starts from the list's resourceVersion with `allowWatchBookmarks`, so an idle kind's
  resourceVersion keeps moving and a reconnect rarely needs a relist.
* `timeoutSeconds` is randomised in [watch_timeout, 2*watch_timeout) so that a thousand nodes do not
  renew in step; a normal end of the stream renews the watch from the last resourceVersion at once.
* `410 Gone` (HTTP status, or an ERROR event with code 410) means the resourceVersion is older than
  what the server keeps (compacted, or before a restarted API server's watch cache): relist and
  `replace`. So do another ERROR event and an event beyond `max_event_bytes`. Other failures
  (connection refused or reset, 5xx, 429, a stream that closes at once without an event) reconnect
  from the last resourceVersion after an exponential backoff with jitter, capped (`Backoff`), so a
  dead API server is never hammered; 401/403 say which RBAC grant is missing; 404 rediscovers.
* Malformed lines are counted (`bad_events`) and skipped; a sink that raises is counted
  (`sink_errors`) and logged, and the watch goes on.
* A socket read timeout of timeoutSeconds + 30 s catches a connection that died without a FIN or
  RST (a vanished node): the server would have ended the stream by then.

Which version of a kind is watched is decided by API discovery: EndpointSlices only when
discovery.k8s.io/v1 is served (v1.21+); otherwise core/v1 Endpoints (the v1beta1 slice shape differs and
the client has no models for it). CronJobs from batch/v1, else batch/v1beta1. A kind the server does
not serve at all is reported (`served: False`) and not retried; it does not hold up `synced()`.

Load on the API server: every node watching every Pod does not scale. `Selector` narrows a kind by
namespace, field selector (`spec.nodeName=NODE` for Pods) or label selector, served from the watch
cache; where the cluster-wide watches live (hub or node) is the caller's choice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import urllib3
from kubernetes import client, config

log = logging.getLogger(__name__)

#: Logical kinds watched by default. "EndpointSlice" stands for "EndpointSlice, or core/v1 Endpoints
#: when discovery.k8s.io/v1 is not served".
DEFAULT_KINDS: tuple[str, ...] = (
    "Pod",
    "Service",
    "EndpointSlice",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "Node",
)

#: Event types passed to `Sink.apply`.
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")

CONNECT_TIMEOUT_S = 10.0
LIST_READ_TIMEOUT_S = 60.0
#: Extra read timeout beyond timeoutSeconds before a silent watch connection is declared dead.
WATCH_READ_GRACE_S = 30.0
LIST_PAGE_SIZE = 500
#: A watch stream that ends sooner than this without a single event counts as a failure (backoff),
#: so a server or proxy that closes every stream at once cannot make us loop hot.
MIN_HEALTHY_WATCH_S = 1.0
#: Bounds on what the server may send. An object is at most ~1.5 MiB in etcd by default; a watch
#: line far beyond that is a broken or hostile peer. A single list response (one page; the watch
#: cache may ignore `limit`) beyond `max_list_bytes` falls back to a paginated consistent list.
MAX_EVENT_BYTES = 16 << 20
MAX_LIST_BYTES = 512 << 20
MAX_ERROR_BODY = 64 << 10
#: Connections the ApiClient keeps: one long-lived watch per kind plus lists and discovery.
POOL_MAXSIZE = 32


class K8sConfigError(Exception):
    """No usable Kubernetes API configuration; the message says what to do."""


class Sink(Protocol):
    """Receives the watched objects (the identity index)."""

    def apply(self, kind: str, event_type: str, obj: dict[str, Any], ts_ns: int) -> None: ...

    def replace(self, kind: str, objs: list[dict[str, Any]], ts_ns: int) -> None: ...


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from `kubeconfig` if given, else from the pod's ServiceAccount (in-cluster).

    Raises K8sConfigError with a one-line message naming the fix when neither works. The client's
    connection pool is widened to hold one watch per kind without discarding connections, and
    urllib3's own retries are off (the Watcher backs off itself).
    """
    cfg = client.Configuration()
    if kubeconfig:
        if not os.path.isfile(kubeconfig):
            raise K8sConfigError(
                f"kubeconfig {kubeconfig!r} does not exist: pass the path of a readable kubeconfig"
            )
        try:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg, persist_config=False
            )
        except Exception as e:  # ConfigException, YAMLError, OSError, ...: every way a file is unusable
            raise K8sConfigError(
                f"kubeconfig {kubeconfig!r} is not usable ({_one_line(e)}): fix it or pass another"
            ) from e
    else:
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise K8sConfigError(
                "no Kubernetes API configuration: not running in a pod (KUBERNETES_SERVICE_HOST is unset) "
                "and no kubeconfig given; pass --kubeconfig PATH or run in the cluster with a ServiceAccount"
            )
        try:
            config.load_incluster_config(client_configuration=cfg)
        except (config.ConfigException, OSError) as e:
            raise K8sConfigError(
                f"in-cluster Kubernetes configuration failed ({_one_line(e)}): mount the ServiceAccount "
                "token (automountServiceAccountToken) or pass --kubeconfig PATH"
            ) from e
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, POOL_MAXSIZE)
    # The Watcher retries with its own backoff; urllib3's immediate retries (3, no delay, a WARNING
    # each) would only triple the attempts on a server that is down and fill the log.
    cfg.retries = False
    return client.ApiClient(cfg)


@dataclass(frozen=True)
class Resource:
    """One served API resource: where to list and watch it."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"


@dataclass(frozen=True)
class Selector:
    """Narrows what one kind's list and watch return (all served by the API server's watch cache)."""

    namespace: str | None = None  # ignored for cluster-scoped kinds (Node)
    field: str | None = None  # e.g. "spec.nodeName=node-a"
    label: str | None = None  # e.g. "app=web"

    @classmethod
    def for_node(cls, node: str) -> Selector:
        """Pods scheduled on one node (what that node's worker can see on its own interfaces)."""
        return cls(field=f"spec.nodeName={node}")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits base*2^(n-1), capped, times U(1-jitter, 1)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt <= 0:
            return 0.0
        d = min(self.cap_s, self.base_s * (2.0 ** min(attempt - 1, 30)))
        return d * (1.0 - self.jitter * rng.random())


# Candidates per logical kind, in order of preference: (kind, group, version, plural).
_CANDIDATES: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "Pod": (("Pod", "", "v1", "pods"),),
    "Service": (("Service", "", "v1", "services"),),
    "Endpoints": (("Endpoints", "", "v1", "endpoints"),),
    "EndpointSlice": (
        ("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices"),
        ("Endpoints", "", "v1", "endpoints"),
    ),
    "ReplicaSet": (("ReplicaSet", "apps", "v1", "replicasets"),),
    "Deployment": (("Deployment", "apps", "v1", "deployments"),),
    "StatefulSet": (("StatefulSet", "apps", "v1", "statefulsets"),),
    "DaemonSet": (("DaemonSet", "apps", "v1", "daemonsets"),),
    "Job": (("Job", "batch", "v1", "jobs"),),
    "CronJob": (("CronJob", "batch", "v1", "cronjobs"), ("CronJob", "batch", "v1beta1", "cronjobs")),
    "Node": (("Node", "", "v1", "nodes"),),
}

SUPPORTED_KINDS: tuple[str, ...] = tuple(_CANDIDATES)


@dataclass
class KindStats:
    """What one kind's watch has done; `Watcher.stats()` returns copies."""

    kind: str  # the logical kind asked for ("EndpointSlice")
    watched: str = ""  # the resource actually watched, once discovered ("v1 endpoints")
    served: bool | None = None  # None until discovery answered
    synced: bool = False  # listed at least once (stays True across reconnects, like an informer)
    connected: bool = False  # a watch stream is open now
    objects: int = 0  # items in the last list
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*EVENT_TYPES, "BOOKMARK"), 0))
    lists: int = 0
    relists: int = 0  # lists after the first (410 Gone, broken stream)
    gone: int = 0  # 410 Gone seen (HTTP status or ERROR event)
    reconnects: int = 0  # watches re-established after a failure (not counting normal renewals)
    renewals: int = 0  # watches ended normally by timeoutSeconds and renewed
    failures: int = 0  # failed attempts (connection refused, HTTP errors, 410s, broken streams)
    bad_events: int = 0  # malformed or unknown lines in a watch stream
    sink_errors: int = 0  # the sink raised
    resource_version: str = ""
    last_error: str = ""
    last_error_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Gone(Exception):
    """The resourceVersion is too old (410): relist."""


class _Relist(Exception):
    """The stream cannot be trusted from where it stopped (oversized event, unexpected ERROR): relist."""


class _Failure(Exception):
    """A transient failure: back off, then resume the watch from the last resourceVersion."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class _Discovery:
    """Served resources per group/version, fetched once and shared by all kinds' threads."""

    def __init__(self, http: _Http) -> None:
        self._http = http
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, dict[str, Any]] | None] = {}

    def resources(self, group: str, version: str) -> dict[str, dict[str, Any]] | None:
        """plural -> APIResource dict, or None when the group/version is not served (404)."""
        gv = f"{group}/{version}" if group else version
        with self._lock:
            if gv in self._cache:
                return self._cache[gv]
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        try:
            doc = self._http.get_json(path, [], LIST_READ_TIMEOUT_S, MAX_ERROR_BODY * 16)
        except _HttpError as e:
            if e.status != 404:
                raise
            doc = None
        found: dict[str, dict[str, Any]] | None = None
        if isinstance(doc, dict):
            found = {
                r["name"]: r
                for r in doc.get("resources") or []
                if isinstance(r, dict) and isinstance(r.get("name"), str)
            }
        with self._lock:
            self._cache[gv] = found
        return found

    def forget(self, group: str, version: str) -> None:
        with self._lock:
            self._cache.pop(f"{group}/{version}" if group else version, None)

    def resolve(self, logical: str) -> Resource | None:
        """The preferred served resource for a logical kind, or None when the server serves none."""
        for kind, group, version, plural in _CANDIDATES[logical]:
            res = self.resources(group, version)
            if not res or plural not in res:
                continue
            verbs = res[plural].get("verbs") or []
            if "list" in verbs and "watch" in verbs:
                return Resource(kind, group, version, plural, bool(res[plural].get("namespaced", True)))
        return None


class _Http:
    """GET requests through the ApiClient (auth, TLS, token refresh), with raw bodies."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def open(self, path: str, query: list[tuple[str, Any]], read_timeout: float) -> urllib3.BaseHTTPResponse:
        """An open streaming response with status 200; other statuses raise _HttpError."""
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )  # fmt: skip
        resp = self.api.call_api(
            method, url, header_params=headers, body=body, post_params=post,
            _request_timeout=(CONNECT_TIMEOUT_S, read_timeout),
        ).response  # fmt: skip
        if resp.status != 200:
            raw = b""
            try:
                raw = _read_capped(resp, MAX_ERROR_BODY, truncate=True)
            finally:
                _close(resp)
            raise _HttpError(resp.status, _status_message(raw, resp.reason or ""))
        return resp

    def get_json(self, path: str, query: list[tuple[str, Any]], read_timeout: float, cap: int) -> Any:
        return _read_json(self.open(path, query, read_timeout), cap, path)


def _read_json(resp: urllib3.BaseHTTPResponse, cap: int, what: str) -> Any:
    """Read a whole JSON body (at most `cap` bytes) and give the connection back."""
    complete = False
    try:
        raw = _read_capped(resp, cap)
        complete = True
    finally:
        _close(resp, reuse=complete)
    try:
        return json.loads(raw)
    except ValueError as e:
        raise _Failure(f"GET {what}: body is not JSON ({_one_line(e)})") from e


class _TooBig(Exception):
    pass


def _read_capped(resp: urllib3.BaseHTTPResponse, cap: int, truncate: bool = False) -> bytes:
    """The whole body, refusing (or with `truncate`, cutting) more than `cap` bytes."""
    buf = bytearray()
    for chunk in resp.stream(65536):
        buf += chunk
        if len(buf) > cap:
            if truncate:
                return bytes(buf[:cap])
            raise _TooBig(f"response larger than {cap} bytes")
    return bytes(buf)


def _close(resp: urllib3.BaseHTTPResponse, reuse: bool = False) -> None:
    """Give the connection back: to the pool for reuse when the body was read to its end, else
    closed (a half-read HTTP/1.1 connection cannot carry another request)."""
    if not reuse:
        with contextlib.suppress(Exception):
            resp.close()
    with contextlib.suppress(Exception):
        resp.release_conn()


def _abort(resp: urllib3.BaseHTTPResponse) -> bool:
    """Wake a thread blocked reading `resp`, from another thread, by shutting its socket down; the
    reading thread then fails its read and closes the response itself. Not close(): closing a socket
    does not interrupt a blocked recv on Linux, and closing the response here would wait for the
    buffered reader's lock, which the blocked thread holds. False when no socket was found."""
    conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
    sock = getattr(conn, "sock", None)
    if not isinstance(sock, socket.socket):
        return False
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    return True


def _status_message(raw: bytes, reason: str) -> str:
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict) and isinstance(doc.get("message"), str):
            return _one_line(doc["message"])
    except ValueError:
        pass
    return _one_line(raw.decode("utf-8", "replace")[:200] or reason)


def _one_line(e: object) -> str:
    return " ".join(str(e).split())[:300]


def _pieces(resp: urllib3.BaseHTTPResponse, size: int = 65536) -> Iterator[bytes]:
    """The body as it arrives, at most `size` bytes at a time (memory stays bounded whatever the
    server's chunk sizes). Watch responses are chunked; a close-delimited one is read with read1 so
    that an event is not held back waiting for `size` bytes."""
    if getattr(resp, "chunked", False):
        yield from resp.stream(size)
        return
    while data := resp.read1(size):
        yield data


def _lines(resp: urllib3.BaseHTTPResponse, max_line: int) -> Iterator[bytes]:
    """Newline-separated lines of a streaming body, as they arrive; raises _TooBig for a line longer
    than `max_line` (so at most max_line + one piece is ever buffered)."""
    buf = b""
    for piece in _pieces(resp):
        buf += piece
        if b"\n" in piece:
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if len(line) > max_line:
                    raise _TooBig(f"watch event larger than {max_line} bytes")
                if line.strip():
                    yield line
        if len(buf) > max_line:
            raise _TooBig(f"watch event larger than {max_line} bytes")
    if buf.strip():
        yield buf


class _KindLoop:
    """One kind: discover, list, watch, and recover; runs on its own thread."""

    def __init__(self, owner: Watcher, logical: str, selector: Selector) -> None:
        self.w = owner
        self.logical = logical
        self.selector = selector
        self.stats = KindStats(kind=logical)
        self.resource: Resource | None = None
        self.rv = ""
        self.need_list = True
        self.consistent = False  # next list: paginated from etcd rather than the watch cache
        self.attempt = 0  # consecutive failures, for the backoff
        self.had_failure = False  # the next watch that opens counts as a reconnect
        self.logged = ""  # the failure last logged as a WARNING
        self.current: urllib3.BaseHTTPResponse | None = None  # open response, for stop()
        self.thread = threading.Thread(target=self.run, name=f"k8s-watch-{logical}", daemon=True)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        stop = self.w._stop
        while not stop.is_set():
            try:
                if self.resource is None and not self._discover():
                    return
                if self.need_list:
                    self._list()
                self._watch()
            except _Gone as e:
                self._gone(str(e))
            except _Relist as e:
                self.need_list, self.consistent = True, True
                self._fail(str(e), relist=True)
            except _TooBig as e:
                self.need_list, self.consistent = True, True
                self._fail(f"{e}: relisting page by page")
            except _HttpError as e:
                if e.status == 410:
                    self._gone(e.message)
                else:
                    self._fail(self._http_error(e))
            except _Failure as e:
                self._fail(str(e))
            except (urllib3.exceptions.HTTPError, client.ApiException, OSError, ValueError) as e:
                self._fail(f"{type(e).__name__}: {_one_line(e)}")
            except Exception as e:  # a bug here must not end the watch for good: log it, back off
                log.exception("k8s watch %s: unexpected error", self.logical)
                self._fail(f"unexpected {type(e).__name__}: {_one_line(e)}")
        self._update(connected=False)

    def _discover(self) -> bool:
        """Resolve the logical kind; False (and the thread ends) when the server does not serve it."""
        self.resource = self.w._discovery.resolve(self.logical)
        if self.resource is None:
            msg = self._not_served()
            self._update(served=False, last_error=msg, last_error_ns=time.time_ns())
            log.warning("k8s watch %s: %s", self.logical, msg)
            self.w._notify()
            return False
        r = self.resource
        self._update(served=True, watched=f"{r.api_version} {r.plural}")
        return True

    def _gone(self, msg: str) -> None:
        self._count("gone")
        self.need_list, self.consistent = True, True
        self._fail(f"410 Gone ({msg}): relisting", relist=True)

    def _fail(self, msg: str, relist: bool = False) -> None:
        """Record a failure and wait before the next attempt. The first 410 in a row relists at once
        (that is the protocol, not an outage); a repeated one, like every other failure, backs off."""
        if self.w._stop.is_set():
            return
        self.attempt += 1
        self.had_failure = True
        with self.w._lock:
            s = self.stats
            s.failures += 1
            s.connected = False
            s.last_error, s.last_error_ns = msg, time.time_ns()
        delay = 0.0 if (relist and self.attempt == 1) else self.w.backoff.delay(self.attempt, self.w._rng)
        # Logged once per change of state, not per retry: a relist is routine (INFO); a new kind of
        # failure is a WARNING; the same failure again is DEBUG (stats keep the count and the text).
        level = logging.INFO if relist else logging.DEBUG if msg == self.logged else logging.WARNING
        if not relist:
            self.logged = msg
        log.log(level, "k8s watch %s: %s; retrying in %.1fs", self.logical, msg, delay)
        if delay:
            self.w._stop.wait(delay)

    def _http_error(self, e: _HttpError) -> str:
        r = self.resource
        what = f"{r.api_version} {r.plural}" if r else self.logical
        if e.status in (401, 403):
            return (
                f"HTTP {e.status} on {what}: {e.message}; grant list and watch on {what} to this "
                "identity (ClusterRole) or fix its credentials"
            )
        if e.status == 404 and r is not None:  # the API went away (CRD removed, downgrade): rediscover
            self.w._discovery.forget(r.group, r.version)
            self.resource, self.need_list = None, True
        return f"HTTP {e.status} on {what}: {e.message}"

    @contextlib.contextmanager
    def _tracked(self, resp: urllib3.BaseHTTPResponse) -> Iterator[urllib3.BaseHTTPResponse]:
        """Make `resp` visible to Watcher.stop(), which shuts its socket down to end a blocked read."""
        with self.w._lock:
            self.current = resp
            stopping = self.w._stop.is_set()
        try:
            if stopping:
                _abort(resp)
            yield resp
        finally:
            with self.w._lock:
                self.current = None

    # -- list -------------------------------------------------------------------------------------

    def _query(self) -> list[tuple[str, Any]]:
        q: list[tuple[str, Any]] = []
        if self.selector.field:
            q.append(("fieldSelector", self.selector.field))
        if self.selector.label:
            q.append(("labelSelector", self.selector.label))
        return q

    def _list(self) -> None:
        r = self.resource
        assert r is not None
        path = r.path(self.selector.namespace)
        items: list[dict[str, Any]] = []
        cont = rv = ""
        while not self.w._stop.is_set():
            q = [*self._query(), ("limit", LIST_PAGE_SIZE)]
            if cont:
                q.append(("continue", cont))
            elif not self.consistent:
                q.append(("resourceVersion", "0"))  # from the watch cache: no etcd read
            try:
                resp = self.w._http.open(path, q, LIST_READ_TIMEOUT_S)
            except _HttpError as e:
                if e.status == 410 and cont:  # the continue token expired mid-list: start over
                    raise _Relist(f"list of {r.plural} expired while paging ({e.message})") from e
                raise
            with self._tracked(resp):
                doc = _read_json(resp, self.w.max_list_bytes, path)
            if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
                raise _Failure(f"list of {r.plural}: the answer is not a List object")
            meta = doc.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            for obj in doc["items"]:
                if isinstance(obj, dict):
                    obj.setdefault("kind", r.kind)  # list items carry neither; watch objects do
                    obj.setdefault("apiVersion", r.api_version)
                    items.append(obj)
            rv = str(meta.get("resourceVersion") or "")
            cont = str(meta.get("continue") or "")
            if not cont:
                break
        if self.w._stop.is_set():
            return
        if not rv:
            raise _Failure(f"list of {r.plural} has no resourceVersion")
        self.w._deliver(self, "replace", r.kind, "", items, time.time_ns())
        with self.w._lock:
            s = self.stats
            s.relists += 1 if s.lists else 0
            s.lists += 1
            s.objects = len(items)
            s.synced = True
            s.resource_version = rv
        self.rv, self.need_list, self.consistent = rv, False, False
        self.w._notify()

    # -- watch ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        r = self.resource
        assert r is not None
        timeout = int(self.w.watch_timeout_s * (1.0 + self.w._rng.random()))
        q = [
            *self._query(),
            ("watch", "true"),
            ("resourceVersion", self.rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", timeout),
        ]
        started = time.monotonic()
        resp = self.w._http.open(r.path(self.selector.namespace), q, timeout + WATCH_READ_GRACE_S)
        if self.had_failure:
            self.had_failure = False
            self._count("reconnects")
            if self.logged:
                log.info("k8s watch %s: watching again (%d failed attempts)", self.logical, self.attempt)
                self.logged = ""
        self._update(connected=True)
        progressed = False
        try:
            with self._tracked(resp):
                for line in _lines(resp, self.w.max_event_bytes):
                    if self._event(line) and not progressed:  # _event first: every line is handled
                        progressed = True
                        self.attempt = 0
                    if self.w._stop.is_set():
                        return
        finally:
            _close(resp)
            self._update(connected=False)
        if self.w._stop.is_set():
            return
        if not progressed and time.monotonic() - started < MIN_HEALTHY_WATCH_S:
            raise _Failure(f"watch of {r.plural} closed at once without an event")
        self._count("renewals")

    def _event(self, line: bytes) -> bool:
        """Handle one watch line; True when it was a valid event (progress)."""
        r = self.resource
        assert r is not None
        try:
            ev = json.loads(line)
        except ValueError:
            self._count("bad_events")
            return False
        if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
            self._count("bad_events")
            return False
        typ, obj = ev.get("type"), ev["object"]
        if typ == "ERROR":
            code = obj.get("code")
            msg = _one_line(obj.get("message") or obj.get("reason") or "no message")
            if code == 410:
                raise _Gone(msg)
            raise _Relist(f"watch of {r.plural} sent ERROR {code}: {msg}")
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if typ not in (*EVENT_TYPES, "BOOKMARK") or not isinstance(rv, str) or not rv:
            self._count("bad_events")
            return False
        self.rv = rv
        if typ != "BOOKMARK":
            self.w._deliver(self, "apply", r.kind, typ, obj, time.time_ns())
        with self.w._lock:
            self.stats.events[typ] += 1
            self.stats.resource_version = rv
        return True

    # -- helpers ----------------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self.w._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _update(self, **values: Any) -> None:
        with self.w._lock:
            for k, v in values.items():
                setattr(self.stats, k, v)

    def _not_served(self) -> str:
        looked = ", ".join(f"{g + '/' if g else ''}{v} {p}" for _k, g, v, p in _CANDIDATES[self.logical])
        return f"not served by this API server (looked for {looked}); not watched"


class Watcher:
    """Lists and watches `kinds` with one thread each and feeds a `Sink`; see the module docstring."""

    def __init__(
        self,
        api: client.ApiClient,
        sink: Sink,
        kinds: Iterable[str] = DEFAULT_KINDS,
        *,
        namespace: str | None = None,
        selectors: Mapping[str, Selector] | None = None,
        watch_timeout_s: float = 300.0,
        backoff: Backoff | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_list_bytes: int = MAX_LIST_BYTES,
        seed: int | None = None,
    ) -> None:
        """`namespace` limits every namespaced kind (None: all namespaces); `selectors` overrides per
        logical kind. `seed` makes jitter reproducible (tests)."""
        kinds = tuple(dict.fromkeys(kinds))
        unknown = [k for k in kinds if k not in _CANDIDATES]
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; supported: {', '.join(SUPPORTED_KINDS)}")
        if watch_timeout_s < 1:
            raise ValueError("watch_timeout_s must be at least 1 second")
        self._sink = sink
        self._http = _Http(api)
        self._discovery = _Discovery(self._http)
        self.watch_timeout_s = watch_timeout_s
        self.backoff = backoff or Backoff()
        self.max_event_bytes = max_event_bytes
        self.max_list_bytes = max_list_bytes
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # stats and `current` responses
        self._sink_lock = threading.Lock()  # one sink call at a time
        self._cond = threading.Condition(self._lock)
        self._started = False
        selectors = dict(selectors or {})
        for k in selectors:
            if k not in kinds:
                raise ValueError(f"selector for {k!r}, which is not among the watched kinds {list(kinds)}")
        self._loops = [_KindLoop(self, k, selectors.get(k) or Selector(namespace=namespace)) for k in kinds]

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Watcher:
        if self._started:
            raise RuntimeError("Watcher.start() called twice")
        self._started = True
        for loop in self._loops:
            loop.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop every thread: set the flag and shut the open watch sockets down so blocked reads end.
        True when all threads ended within `timeout` (a thread stuck in a connect ends by itself
        within the connect timeout; they are daemon threads)."""
        self._stop.set()
        with self._lock:
            open_ = [loop.current for loop in self._loops if loop.current is not None]
            self._cond.notify_all()
        for resp in open_:
            if not _abort(resp):
                log.warning("k8s watch: an open response has no socket to shut down; its thread ends "
                            "when the server closes the stream")  # fmt: skip
        end = time.monotonic() + timeout
        for loop in self._loops:
            if loop.thread.is_alive():
                loop.thread.join(max(0.0, end - time.monotonic()))
        return not any(loop.thread.is_alive() for loop in self._loops)

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------------

    def synced(self) -> bool:
        """Every kind the server serves has been listed at least once."""
        with self._lock:
            return self._synced_locked()

    def _synced_locked(self) -> bool:
        return all(loop.stats.synced or loop.stats.served is False for loop in self._loops)

    def wait_synced(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while not self._synced_locked():
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def stats(self) -> dict[str, KindStats]:
        """Per logical kind, a copy of its counters and state."""
        with self._lock:
            return {loop.logical: KindStats(**asdict(loop.stats)) for loop in self._loops}

    def resources(self) -> dict[str, Resource | None]:
        """The resource each logical kind resolved to (None before discovery or when not served)."""
        return {loop.logical: loop.resource for loop in self._loops}

    # -- internals --------------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _deliver(self, loop: _KindLoop, what: str, kind: str, typ: str, payload: Any, ts: int) -> None:
        """Call the sink under the sink lock; a sink that raises is counted and logged, and the watch
        goes on (one bad object must not blind the worker to every later change)."""
        try:
            with self._sink_lock:
                if what == "replace":
                    self._sink.replace(kind, payload, ts)
                else:
                    self._sink.apply(kind, typ, payload, ts)
        except Exception as e:
            with self._lock:
                loop.stats.sink_errors += 1
                first = loop.stats.sink_errors == 1
            (log.exception if first else log.debug)("k8s watch %s: sink.%s failed: %s", kind, what, e)
