"""What `podshark tap` and `podshark clean` ask of the API server: apply, wait for the rollout, delete.

Through the `kubernetes` client's DynamicClient, so any kind in the manifests is applied the same
way: create, or on 409 a JSON merge patch of what the manifests set (what `kubectl apply` does for
objects it did not create itself). `dry_run=True` sends everything with `dryRun=All`: the server
runs admission and validation and stores nothing. Re-running tap keeps the token already in the
cluster, so workers and open UIs keep working; so does its TLS Secret while it is usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podshark.tap.render import Obj

Progress = Callable[[str], None]


class TapError(Exception):
    """The cluster refused or did not get there; the message says what to do next."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """An ApiClient for `context` of `kubeconfig` (default: $KUBECONFIG, else ~/.kube/config, as kubectl)."""
    from kubernetes import config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
    except Exception as e:  # ConfigException, YAMLError, OSError: every way a kubeconfig is unusable
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
        ctx = f" (context {context!r})" if context else ""
        raise TapError(f"no usable kubeconfig at {where}{ctx}: {e}; pass --kubeconfig or --context") from e


def _dynamic(api: Any) -> Any:
    from kubernetes.dynamic import DynamicClient

    try:
        return DynamicClient(api)
    except Exception as e:
        raise TapError(f"cannot reach the API server at {api.configuration.host}: {_reason(e)}") from e


def apply(api: Any, objs: list[Obj], *, dry_run: bool = False, progress: Progress | None = None) -> list[str]:
    """Create or update each object in order; returns `created|configured|unchanged kind/name` lines."""
    from kubernetes.dynamic.exceptions import ConflictError, DynamicApiError

    dyn = _dynamic(api)
    done = []
    for obj in objs:
        kind, md = obj["kind"], obj["metadata"]
        what = f"{kind.lower()}/{md['name']}"
        try:
            res = dyn.resources.get(api_version=obj["apiVersion"], kind=kind)
            kw: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
            if res.namespaced:
                kw["namespace"] = md["namespace"]
            try:
                res.create(body=obj, **kw)
                verb = "created"
            except ConflictError:
                res.patch(body=obj, name=md["name"], content_type="application/merge-patch+json", **kw)
                verb = "configured"
        except DynamicApiError as e:
            raise TapError(f"{what}: the API server said {_reason(e)}") from e
        except Exception as e:
            raise TapError(f"{what}: {_reason(e)}") from e
        line = f"{verb} {what}" + (" (server dry run)" if dry_run else "")
        done.append(line)
        if progress:
            progress(line)
    return done


def existing_token(api: Any, namespace: str) -> str | None:
    """The token a previous tap stored in this namespace, if any."""
    return existing_secret(api, namespace, "podshark-token").get("token") or None


def existing_secret(api: Any, namespace: str, name: str) -> dict[str, str]:
    """A Secret's data, decoded as text; empty when there is none (or it cannot be read)."""
    import base64
    import binascii

    from kubernetes import client

    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except Exception:
        return {}
    out = {}
    for key, raw in (secret.data or {}).items():
        try:
            out[key] = base64.b64decode(raw).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            continue  # not ours, or damaged: the caller decides without it
    return out


@dataclass
class Rollout:
    workers_desired: int = 0
    workers_ready: int = 0
    workers_updated: int = 0
    hub_ready: int = 0
    hub_updated: int = 0

    @property
    def done(self) -> bool:
        return (
            self.workers_desired > 0
            and self.workers_ready == self.workers_updated == self.workers_desired
            and self.hub_ready >= 1
            and self.hub_updated >= 1
        )

    def line(self) -> str:
        return (
            f"workers {self.workers_ready}/{self.workers_desired} ready, hub {min(self.hub_ready, 1)}/1 ready"
        )


def rollout(api: Any, namespace: str) -> Rollout:
    from kubernetes import client

    apps = client.AppsV1Api(api)
    ds: Any = apps.read_namespaced_daemon_set_status("podshark-worker", namespace).status
    dep: Any = apps.read_namespaced_deployment_status("podshark-hub", namespace).status
    return Rollout(
        workers_desired=ds.desired_number_scheduled or 0,
        workers_ready=ds.number_ready or 0,
        workers_updated=ds.updated_number_scheduled or 0,
        hub_ready=dep.ready_replicas or 0,
        hub_updated=dep.updated_replicas or 0,
    )


def wait_rollout(api: Any, namespace: str, timeout: float, progress: Progress | None = None) -> Rollout:
    """Until every worker and the hub are ready (progress on each change); TapError with the pods'
    problems on timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    state = Rollout()
    while True:
        try:
            state = rollout(api, namespace)
        except Exception as e:
            state = Rollout()
            line = f"waiting for the API server: {_reason(e)}"
        else:
            line = state.line()
        if progress and line != last:
            progress(line)
            last = line
        if state.done:
            return state
        if time.monotonic() > deadline:
            problems = pod_problems(api, namespace)
            raise TapError(
                f"not ready after {timeout:.0f}s ({state.line()})"
                + (": " + "; ".join(problems) if problems else "")
                + f". Look with: kubectl -n {namespace} get pods; kubectl -n {namespace} describe pods"
            )
        time.sleep(1.0)


def pod_problems(api: Any, namespace: str) -> list[str]:
    """One phrase per pod that is not running and ready: why (waiting reason, scheduling message)."""
    from kubernetes import client

    out = []
    try:
        pods: list[Any] = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    except Exception as e:
        return [f"cannot list pods: {_reason(e)}"]
    for pod in pods:
        st: Any = pod.status
        reasons = []
        for cs in (st.init_container_statuses or []) + (st.container_statuses or []):
            waiting = cs.state.waiting if cs.state else None
            if waiting is not None and waiting.reason:
                why = f"{cs.name}: {waiting.reason}"
                if waiting.reason == "CrashLoopBackOff":  # how and why the last run ended says more
                    ended = cs.last_state.terminated if cs.last_state else None
                    if ended is not None and (ended.message or ended.reason):
                        detail = " ".join(x for x in (ended.reason, ended.message) if x)
                        why += f", last exit {ended.exit_code}: {detail}"
                    why += f", last log: {_last_log(api, namespace, pod.metadata.name, cs.name)}"
                elif waiting.message:
                    why += f" ({waiting.message})"
                reasons.append(why)
            running = cs.state.running if cs.state else None
            if running is not None and not cs.ready and cs.name in _probed(pod):
                reasons.append(f"{cs.name}: running but not ready (its readiness probe fails)")
        for cond in st.conditions or []:
            if cond.type == "PodScheduled" and cond.status != "True" and cond.message:
                reasons.append(f"not scheduled: {cond.message}")
        if reasons:
            out.append(f"{pod.metadata.name}: " + ", ".join(reasons))
    return out


def _probed(pod: Any) -> set[str]:
    """Names of the pod's containers that have a readiness probe."""
    return {c.name for c in (pod.spec.containers or []) if c.readiness_probe is not None}


def _last_log(api: Any, namespace: str, pod: str, container: str, lines: int = 6) -> str:
    """The last lines the previous run of a crashing container wrote, on one line."""
    from kubernetes import client

    try:
        text = client.CoreV1Api(api).read_namespaced_pod_log(
            pod, namespace, container=container, previous=True, tail_lines=lines
        )
    except Exception as e:
        return f"(unavailable: {_reason(e)})"
    return " | ".join(x.strip() for x in str(text).splitlines() if x.strip())[-1500:] or "(empty)"


def clean(api: Any, namespace: str, *, wait: float = 0.0, progress: Progress | None = None) -> list[str]:
    """Delete what tap created for `namespace`: the cluster-scoped role and binding, then the
    namespace (and with it everything inside, the hub's volume claim included). Idempotent."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api)
    core = client.CoreV1Api(api)
    deleted = []
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            f"clusterrolebinding/podshark-worker-{namespace}",
            lambda: rbac.delete_cluster_role_binding(f"podshark-worker-{namespace}"),
        ),
        (
            f"clusterrole/podshark-worker-{namespace}",
            lambda: rbac.delete_cluster_role(f"podshark-worker-{namespace}"),
        ),
        (f"namespace/{namespace}", lambda: core.delete_namespace(namespace)),
    ]
    for what, call in steps:
        try:
            call()
        except client.ApiException as e:
            if e.status == 404:
                continue
            raise TapError(f"deleting {what}: the API server said {_reason(e)}") from e
        except Exception as e:
            raise TapError(f"deleting {what}: {_reason(e)}") from e
        deleted.append(what)
        if progress:
            progress(f"deleted {what}")
    if wait > 0:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                core.read_namespace(namespace)
            except client.ApiException as e:
                if e.status == 404:
                    break
            time.sleep(1.0)
        else:
            raise TapError(f"namespace {namespace} still terminating after {wait:.0f}s")
    return deleted


def _reason(e: BaseException) -> str:
    """One line from an API error: its status message when it has one."""
    import json

    body = getattr(e, "body", None)
    if body:
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and doc.get("message"):
                return f"{doc.get('code', '')} {doc['message']}".strip()
        except (ValueError, TypeError):
            pass
    summary = getattr(e, "summary", None)
    if callable(summary):
        try:
            return str(summary())
        except Exception:
            pass
    return " ".join(str(e).split())[:300]
