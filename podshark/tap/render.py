"""The manifests, rendered with `podshark tap`'s options: one list of API objects, one YAML text.

The files in manifests/ are the source (`kubectl apply -k manifests/` installs them as they are);
rendering changes only what the options name, on plain dicts, so the YAML a user reads with
`--dry-run` is exactly what gets applied:

* the namespace: every namespaced object, the Namespace itself, the binding's subject and the
  workers' hub URL (`podshark-hub.<ns>.svc`); the cluster-scoped ClusterRole and binding are named
  `podshark-worker-<ns>` so two installations in two namespaces do not overwrite each other's;
* the image of every container;
* the token in the Secret;
* TLS (on unless `--no-tls`): the Secret `podshark-tls` (`podshark/tap/tls.py`: a CA, the hub's
  certificate for the Service's names in the namespace, the workers' client certificate) placed
  after the token's, and the CA's fingerprint as an annotation of both pod templates so a new CA
  rolls them; with `--no-tls` the hub serves plain HTTP: its TLS arguments, the workers' `--hub-*`
  TLS arguments, the `tls` volumes and the probes' HTTPS scheme are taken out;
* the hub's storage: a PersistentVolumeClaim (`pvc`, needs a storage provisioner) or a hostPath
  directory on the node the hub runs on (`hostpath`, for clusters without one; an init container
  hands the directory to the hub's user, since fsGroup does not apply to hostPath volumes);
* a `podshark.io/tap: <namespace>` label on every object, so `kubectl get -A -l podshark.io/tap`
  finds what tap installed (`podshark clean` deletes the namespace and the two cluster-scoped
  objects by name);
* `--patch FILE`: partial objects (multi-document YAML) merged into the object of the same kind and
  name, the way a strategic merge patch does for the common cases: mappings merge, lists of
  mappings that have a `name` (containers, env, volumes, volumeMounts, ports) merge item by name,
  other lists and scalars are replaced, and `null` removes a key. For what the options do not
  cover: a private registry's imagePullSecrets, node selectors, resources, a dev cluster's quirks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

DEFAULT_NAMESPACE = "podshark"
DEFAULT_IMAGE = "ghcr.io/podshark/podshark:0.1.0"
MANAGED_LABEL = "podshark.io/tap"  # value: the namespace
HUB_PORT = 8898
HOSTPATH_DIR = "/var/lib/podshark-hub"
STORAGE = ("pvc", "hostpath")


class RenderError(Exception):
    """The manifests or the options cannot be rendered; the message says why."""


@dataclass
class TapOptions:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    token: str = ""
    storage: str = "pvc"
    storage_size: str = "20Gi"
    worker_args: list[str] = field(default_factory=list)  # appended to the worker's arguments
    tls: bool = True  # HTTPS hub, workers with client certificates (False: --no-tls)
    tls_material: dict[str, str] | None = None  # the podshark-tls Secret's PEMs; None: a fresh set
    patches: list[Obj] = field(default_factory=list)  # merged last (see the module docstring)


def manifests_dir() -> Path:
    """Where the manifests are: the `manifests` package (installed or in the repository)."""
    try:
        from manifests import DIR
    except ImportError:  # an editable install made before manifests/ was a package
        return Path(__file__).resolve().parents[2] / "manifests"
    return DIR


def load(directory: Path | None = None) -> list[Obj]:
    """The objects of every file kustomization.yaml lists, in its order."""
    directory = directory or manifests_dir()
    try:
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        docs: list[Obj] = []
        for name in kust["resources"]:
            docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise RenderError(f"cannot read the manifests in {directory}: {e}") from e
    return docs


def render(opts: TapOptions, docs: Iterable[Obj] | None = None) -> list[Obj]:
    """The objects `podshark tap` applies for `opts` (see the module docstring)."""
    if opts.storage not in STORAGE:
        raise RenderError(f"--storage must be one of {', '.join(STORAGE)}, not {opts.storage!r}")
    if not _dns_label(opts.namespace):
        raise RenderError(
            f"{opts.namespace!r} is not a valid namespace name (lowercase letters, digits and '-', "
            "at most 63 characters)"
        )
    from podshark.tap import tls

    ns = opts.namespace
    material = (opts.tls_material or tls.make_material(ns)) if opts.tls else None
    out: list[Obj] = []
    for src in load() if docs is None else docs:
        obj = copy.deepcopy(src)
        kind = obj.get("kind")
        md = obj.setdefault("metadata", {})
        md.setdefault("labels", {})[MANAGED_LABEL] = ns
        if kind == "Namespace":
            md["name"] = ns
        elif kind in ("ClusterRole", "ClusterRoleBinding"):
            md["name"] = f"{md['name']}-{ns}"
        else:
            md["namespace"] = ns
        if kind == "ClusterRoleBinding":
            obj["roleRef"]["name"] = f"{obj['roleRef']['name']}-{ns}"
            for subject in obj.get("subjects", []):
                subject["namespace"] = ns
        then: list[Obj] = []  # objects that follow this one
        if kind == "Secret" and md.get("name") == "podshark-token":
            obj["stringData"] = {"token": opts.token}
            if material is not None:
                then.append(tls.secret_object(ns, material))
                then[-1]["metadata"]["labels"][MANAGED_LABEL] = ns
        if kind == "PersistentVolumeClaim":
            if opts.storage != "pvc":
                continue
            obj["spec"]["resources"]["requests"]["storage"] = opts.storage_size
        spec = _pod_spec(obj)
        if spec is not None:
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                c["image"] = opts.image
                c["args"] = [_hub_url(a, ns, opts.tls) for a in c.get("args", [])]
            if material is not None:
                template_md = obj["spec"]["template"].setdefault("metadata", {})
                template_md.setdefault("annotations", {})[tls.FINGERPRINT_ANNOTATION] = tls.fingerprint(
                    material
                )
            else:
                _without_tls(spec)
            if kind == "DaemonSet" and md.get("name") == "podshark-worker":
                spec["containers"][0]["args"] += opts.worker_args
            if kind == "Deployment" and md.get("name") == "podshark-hub" and opts.storage == "hostpath":
                _hostpath_storage(spec, opts.image)
        out += [obj, *then]
    for patch in opts.patches:
        kind, name = patch.get("kind"), (patch.get("metadata") or {}).get("name")
        targets = [o for o in out if o["kind"] == kind and o["metadata"]["name"] in (name, f"{name}-{ns}")]
        if not targets:
            have = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in out)
            raise RenderError(f"--patch names {kind}/{name}, which is not among the manifests ({have})")
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        body.get("metadata", {}).pop("name", None)
        merge(targets[0], body)
    return out


def load_patches(path: Path) -> list[Obj]:
    """The partial objects in a --patch file; RenderError if it is not YAML of named objects."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise RenderError(f"cannot read --patch {path}: {e}") from e
    for d in docs:
        if not isinstance(d, dict) or not d.get("kind") or not (d.get("metadata") or {}).get("name"):
            raise RenderError(f"--patch {path}: every document needs kind and metadata.name")
    return docs


def merge(into: Obj, patch: Obj) -> None:
    """Merge `patch` into `into` in place (see the module docstring for the rules)."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif (
            isinstance(value, list)
            and isinstance(into.get(key), list)
            and _named(value)
            and _named(into[key])
        ):
            by_name = {item["name"]: item for item in into[key]}
            for item in value:
                if item["name"] in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    into[key].append(copy.deepcopy(item))
        else:
            into[key] = copy.deepcopy(value)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def to_yaml(objs: Iterable[Obj]) -> str:
    """Multi-document YAML, in apply order."""
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objs)


def _pod_spec(obj: Obj) -> Obj | None:
    if obj.get("kind") in ("Deployment", "DaemonSet", "StatefulSet"):
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    return None


def _hub_url(arg: str, ns: str, tls: bool = True) -> str:
    if arg.startswith("--hub="):
        return f"--hub={'https' if tls else 'http'}://podshark-hub.{ns}.svc:{HUB_PORT}"
    return arg


TLS_ARGS = ("--tls-cert=", "--tls-key=", "--client-ca=", "--hub-ca=", "--hub-cert=", "--hub-key=")


def _without_tls(spec: Obj) -> None:
    """A pod spec of the manifests as it runs with `--no-tls`."""
    spec["volumes"] = [v for v in spec.get("volumes", []) if v.get("name") != "tls"]
    for c in spec.get("containers", []):
        c["args"] = [a for a in c.get("args", []) if not a.startswith(TLS_ARGS)]
        c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m.get("name") != "tls"]
        for probe in ("readinessProbe", "livenessProbe"):
            get = (c.get(probe) or {}).get("httpGet")
            if get is not None:
                get.pop("scheme", None)


def _hostpath_storage(spec: Obj, image: str) -> None:
    for v in spec["volumes"]:
        if v["name"] == "data":
            v.pop("persistentVolumeClaim", None)
            v["hostPath"] = {"path": HOSTPATH_DIR, "type": "DirectoryOrCreate"}
    user = spec.get("securityContext", {}).get("runAsUser", 10001)
    spec["initContainers"] = [
        {
            "name": "data-owner",
            "image": image,
            "command": ["chown", f"{user}:{user}", "/data"],
            "securityContext": {"runAsUser": 0, "runAsNonRoot": False, "capabilities": {"add": ["CHOWN"]}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }
    ]


def _dns_label(name: str) -> bool:
    return (
        0 < len(name) <= 63
        and name[0].isalnum()
        and name[-1].isalnum()
        and all(c.islower() or c.isdigit() or c == "-" for c in name)
    )
