"""The TLS material `podshark tap` installs, and the CA copy it keeps for the user's own clients.

One Secret, `podshark-tls`, holds `ca.crt`, `hub.crt`/`hub.key` (SANs: the hub Service's DNS names
in its namespace, plus localhost, 127.0.0.1 and ::1 for the port-forward) and `worker.crt`/
`worker.key` (clientAuth). Each pod mounts only its own files (the manifests' `items`).

The CA's private key is made, used to sign the two leaves, and dropped: it is written nowhere, not
in the cluster and not on the user's disk, so nothing that can read the Secret (or the laptop) can
mint certificates the hub would accept. A re-run of tap keeps the Secret while it is usable (every
key present, the hub certificate naming this namespace's Service, issued by the CA, and valid for
at least `RENEW_BEFORE`); otherwise tap makes a fresh set. The pod templates carry the CA's
fingerprint (`FINGERPRINT_ANNOTATION`), so a fresh set rolls the hub and the workers onto it.

The user's copy of `ca.crt` is written under `$XDG_CONFIG_HOME/podshark/tap/<API server>/<namespace>/`
(one per cluster and namespace), for `podshark ui --hub https://127.0.0.1:PORT --ca ...`;
`podshark clean` removes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from podshark.certs_cmd import LOOPBACK_NAMES, cert_pem, issue, key_pem, new_authority

SECRET = "podshark-tls"
KEYS = ("ca.crt", "hub.crt", "hub.key", "worker.crt", "worker.key")
SERVICE = "podshark-hub"
RENEW_BEFORE = dt.timedelta(days=30)
FINGERPRINT_ANNOTATION = "podshark.io/tls-ca-sha256"
CA_DAYS = 3650
LEAF_DAYS = 825

Material = dict[str, str]  # key in the Secret -> PEM text


def hub_names(namespace: str) -> list[str]:
    """What the hub certificate must name: the Service however a pod spells it, and loopback."""
    svc = f"{SERVICE}.{namespace}"
    return [SERVICE, svc, f"{svc}.svc", f"{svc}.svc.cluster.local", *LOOPBACK_NAMES]


def make_material(namespace: str, now: dt.datetime | None = None) -> Material:
    """A fresh CA (its key dropped), a hub certificate and a worker client certificate."""
    ca = new_authority(f"podshark CA ({namespace})", days=CA_DAYS, now=now)
    hub = issue(ca, "server", SERVICE, hosts=hub_names(namespace), days=LEAF_DAYS, now=now)
    worker = issue(ca, "client", "podshark-worker", days=LEAF_DAYS, now=now)
    return {
        "ca.crt": cert_pem(ca.cert).decode(),
        "hub.crt": cert_pem(hub.cert).decode(),
        "hub.key": key_pem(hub.key).decode(),
        "worker.crt": cert_pem(worker.cert).decode(),
        "worker.key": key_pem(worker.key).decode(),
    }


def problem(material: Material, namespace: str, now: dt.datetime | None = None) -> str | None:
    """Why an existing Secret's material cannot be kept, or None when it can."""
    from cryptography import x509

    missing = [k for k in KEYS if not material.get(k)]
    if missing:
        return f"it lacks {', '.join(missing)}"
    now = now or dt.datetime.now(dt.UTC)
    try:
        ca = x509.load_pem_x509_certificate(material["ca.crt"].encode())
        leaves = {k: x509.load_pem_x509_certificate(material[k].encode()) for k in ("hub.crt", "worker.crt")}
    except ValueError as e:
        return f"a certificate in it does not parse ({e})"
    for name, cert in leaves.items():
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            return f"its {name} is not issued by its ca.crt"
        if cert.not_valid_after_utc - now < RENEW_BEFORE:
            return f"its {name} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        san = leaves["hub.crt"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "its hub.crt names no host"
    named = {str(n.value) for n in san}
    absent = [h for h in hub_names(namespace) if h not in named]
    if absent:
        return f"its hub.crt does not name {', '.join(absent)}"
    return None


def fingerprint(material: Material) -> str:
    """SHA-256 of the CA certificate's PEM: what the pod templates are annotated with."""
    return hashlib.sha256(material["ca.crt"].encode()).hexdigest()


def config_root() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "podshark" / "tap"


def local_ca_path(api_host: str, namespace: str) -> Path:
    """Where the user's copy of the CA lives for this cluster (its API server) and namespace."""
    server = re.sub(r"[^A-Za-z0-9.-]+", "_", api_host.split("://", 1)[-1]).strip("_") or "cluster"
    return config_root() / server / namespace / "ca.crt"


def write_local_ca(path: Path, material: Material) -> None:
    """Write the CA certificate (public; 0644) through a temporary file."""
    from podshark.certs_cmd import write_file

    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, material["ca.crt"].encode(), 0o644)


def remove_local_ca(path: Path) -> bool:
    """Remove the CA copy and its now-empty directories; whether there was one."""
    if not path.exists():
        return False
    path.unlink()
    for d in (path.parent, path.parent.parent):
        try:
            d.rmdir()  # only when empty: another namespace's copy stays
        except OSError:
            break
    return True


def secret_object(namespace: str, material: Material) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "podshark"},
        },
        "type": "Opaque",
        "stringData": dict(material),
    }
