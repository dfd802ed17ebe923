"""`podshark tap`'s manifests: what `--dry-run` prints, what the API server accepts, what `clean` removes.

TLS (on by default): the dry run's Secret is judged by OpenSSL (the hub certificate chains to the
CA, names the Service in the chosen namespace and is a server certificate; the workers' is a client
certificate; no CA key is shipped), each pod mounts only its own files, and `--no-tls` takes all of
it out.

The RBAC rules are compared with what the identity watcher actually lists and watches
(`capture.k8s.watch`'s resources), so a kind added there without its grant, or a grant left
behind, fails here. Against the lab (a real v1.20 API server): a server-side dry run of every
object, a real apply whose ServiceAccount can do exactly what identity needs (`kubectl auth
can-i`), a second tap that keeps the token, and `podshark clean`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from capture.k8s.watch import _CANDIDATES
from tests.capture.test_worker import PODSHARK
from tests.hub.test_service import REPO
from tests.identity.kube import Lab, create_namespace, wait_for

KINDS = ["Namespace", "ServiceAccount", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
         "Secret", "DaemonSet", "PersistentVolumeClaim", "Deployment", "Service"]  # fmt: skip


def tap(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [PODSHARK, "tap", *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    if check:
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    return r


def dry_run(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(tap("--dry-run", *args).stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def test_dry_run_prints_every_object_in_the_chosen_namespace_with_a_fresh_token() -> None:
    docs = dry_run("--namespace", "ops-x", "--image", "registry.example/podshark:9")
    assert [d["kind"] for d in docs] == KINDS
    for d in docs:
        assert d["metadata"]["labels"]["podshark.io/tap"] == "ops-x"
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "ops-x", d["kind"]
    assert by_kind(docs, "Namespace")["metadata"]["name"] == "ops-x"
    binding = by_kind(docs, "ClusterRoleBinding")
    assert binding["metadata"]["name"] == binding["roleRef"]["name"] == "podshark-worker-ops-x"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "podshark-worker", "namespace": "ops-x"}
    ]
    worker = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    hub = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    for spec in (worker, hub):
        assert {c["image"] for c in spec["containers"]} == {"registry.example/podshark:9"}
    assert "--hub=https://podshark-hub.ops-x.svc:8898" in worker["containers"][0]["args"]
    assert worker["hostNetwork"] and worker["hostPID"]
    assert worker["containers"][0]["securityContext"]["privileged"] is False
    token = by_kind(docs, "Secret", "podshark-token")["stringData"]["token"]
    again = by_kind(dry_run("--namespace", "ops-x"), "Secret", "podshark-token")["stringData"]["token"]
    assert len(token) >= 32 and len(again) >= 32 and token != again


def _openssl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_is_on_with_certificates_openssl_accepts_and_each_pod_gets_only_its_own(tmp_path: Path) -> None:
    docs = dry_run("--namespace", "ops-x")
    secret = by_kind(docs, "Secret", "podshark-tls")
    pems = secret["stringData"]
    assert set(pems) == {"ca.crt", "hub.crt", "hub.key", "worker.crt", "worker.key"}  # no ca.key
    assert sum(text.count("-----BEGIN PRIVATE KEY-----") for text in pems.values()) == 2  # hub, worker
    for name, text in pems.items():
        (tmp_path / name).write_text(text)
    ca = str(tmp_path / "ca.crt")
    for leaf, purpose in (("hub.crt", "sslserver"), ("worker.crt", "sslclient")):
        r = _openssl("verify", "-CAfile", ca, "-purpose", purpose, str(tmp_path / leaf))
        assert r.returncode == 0, (leaf, r.stdout, r.stderr)
    assert (
        _openssl("verify", "-CAfile", ca, "-purpose", "sslclient", str(tmp_path / "hub.crt")).returncode != 0
    )
    hub_text = _openssl("x509", "-in", str(tmp_path / "hub.crt"), "-noout", "-text").stdout
    san = re.search(r"Subject Alternative Name:\s*\n\s*(.+)", hub_text)
    assert san is not None and set(san.group(1).strip().split(", ")) == {
        "DNS:podshark-hub", "DNS:podshark-hub.ops-x", "DNS:podshark-hub.ops-x.svc",
        "DNS:podshark-hub.ops-x.svc.cluster.local", "DNS:localhost", "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    }  # fmt: skip
    for leaf in ("hub", "worker"):
        from_cert = _openssl("x509", "-in", str(tmp_path / f"{leaf}.crt"), "-noout", "-pubkey").stdout
        from_key = _openssl("pkey", "-in", str(tmp_path / f"{leaf}.key"), "-pubout").stdout
        assert from_cert and from_cert == from_key, leaf

    fingerprint = hashlib.sha256(pems["ca.crt"].encode()).hexdigest()
    for kind, own, flags in (
        ("Deployment", {"ca.crt", "hub.crt", "hub.key"}, ["--tls-cert=", "--tls-key=", "--client-ca="]),
        ("DaemonSet", {"ca.crt", "worker.crt", "worker.key"}, ["--hub-ca=", "--hub-cert=", "--hub-key="]),
    ):
        template = by_kind(docs, kind)["spec"]["template"]
        assert template["metadata"]["annotations"]["podshark.io/tls-ca-sha256"] == fingerprint
        (vol,) = [v for v in template["spec"]["volumes"] if v["name"] == "tls"]
        assert vol["secret"]["secretName"] == "podshark-tls"
        assert {i["key"] for i in vol["secret"]["items"]} == own, kind
        container = template["spec"]["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        for flag in flags:  # every TLS file argument points into that mount, at a file it has
            (arg,) = [a for a in container["args"] if a.startswith(flag)]
            path = arg.split("=", 1)[1]
            assert path.rsplit("/", 1) == [mount["mountPath"], path.rsplit("/", 1)[1]], arg
            assert path.rsplit("/", 1)[1] in own, arg
    hub = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert hub["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert hub["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_no_tls_takes_every_part_of_it_out() -> None:
    docs = dry_run("--no-tls", "--namespace", "ops-y")
    assert [d["kind"] for d in docs] == [k for i, k in enumerate(KINDS) if i != 6]  # one Secret
    assert by_kind(docs, "Secret")["metadata"]["name"] == "podshark-token"
    for kind in ("Deployment", "DaemonSet"):
        spec = by_kind(docs, kind)["spec"]["template"]["spec"]
        assert "tls" not in [v["name"] for v in spec["volumes"]]
        container = spec["containers"][0]
        assert "tls" not in [m["name"] for m in container["volumeMounts"]]
        assert not [
            a for a in container["args"] if a.startswith(("--tls-", "--client-ca", "--hub-c", "--hub-k"))
        ]
    worker = by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert "--hub=http://podshark-hub.ops-y.svc:8898" in worker["args"]
    hub = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "scheme" not in hub["readinessProbe"]["httpGet"]
    assert "--tls" in worker["args"]  # the worker's eBPF TLS tracing is another thing, and stays


def test_hostpath_storage_replaces_the_claim() -> None:
    docs = dry_run("--storage", "hostpath")
    assert "PersistentVolumeClaim" not in [d["kind"] for d in docs]
    hub = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (data,) = [v for v in hub["volumes"] if v["name"] == "data"]
    assert data == {
        "name": "data",
        "hostPath": {"path": "/var/lib/podshark-hub", "type": "DirectoryOrCreate"},
    }
    assert hub["initContainers"][0]["command"] == ["chown", "10001:10001", "/data"]


def test_rbac_grants_exactly_what_the_identity_watches_need() -> None:
    rules = by_kind(dry_run(), "ClusterRole")["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {(group, plural, verb) for cands in _CANDIDATES.values() for _, group, _, plural in cands
              for verb in ("list", "watch")}  # fmt: skip
    needed.add(("", "nodes", "get"))  # the startup check that --node names a real node
    assert needed <= granted, needed - granted
    assert {v for _, _, v in granted} == {"get", "list", "watch"}  # reads only
    assert {(g, r) for g, r, _ in granted} == {(g, r) for g, r, _ in needed}  # no other resource


def test_bad_options_say_what_is_wrong() -> None:
    r = tap("--dry-run", "--namespace", "Not_Valid", check=False)
    assert r.returncode == 2 and "not a valid namespace name" in r.stderr
    r = tap("--kubeconfig", "/nonexistent/kubeconfig", check=False)
    assert r.returncode == 2 and "no usable kubeconfig" in r.stderr and "--kubeconfig" in r.stderr


@pytest.mark.timeout(300)
def test_server_dry_run_apply_rbac_token_kept_and_clean(kube: Lab) -> None:
    ns = create_namespace(kube, "t-tap")  # a server dry run cannot create the namespace it validates in
    kc = ["--kubeconfig", str(kube.kubeconfig), "--namespace", ns]
    try:
        r = tap("--server-dry-run", *kc)
        assert r.stderr.count("(server dry run)") == len(KINDS), r.stderr
        assert kube.get_or_none("clusterrole", f"podshark-worker-{ns}") is None  # nothing stored
        assert kube.get_or_none("-n", ns, "secret", "podshark-token") is None
        assert kube.get_or_none("-n", ns, "secret", "podshark-tls") is None

        # a real apply: tap waits for a rollout that cannot happen here (no node runs pods), so it
        # gives up after its --timeout, naming the state
        r = tap(*kc, "--timeout", "3", "--no-ui", check=False)
        assert r.returncode == 1 and "not ready after 3s" in r.stderr, r.stderr[-2000:]
        for kind in ("daemonset/podshark-worker", "deployment/podshark-hub", "service/podshark-hub",
                     "persistentvolumeclaim/podshark-hub-data", "secret/podshark-token",
                     "secret/podshark-tls"):  # fmt: skip
            assert kube.get_or_none("-n", ns, kind) is not None, kind
        sa = f"system:serviceaccount:{ns}:podshark-worker"
        for verb, what, allowed in (
            ("watch", "pods", "yes"), ("list", "endpoints", "yes"), ("watch", "replicasets.apps", "yes"),
            ("list", "cronjobs.batch", "yes"), ("get", "nodes", "yes"),
            ("create", "pods", "no"), ("get", "secrets", "no"), ("delete", "pods", "no"),
        ):  # fmt: skip
            out = kube.kubectl("auth", "can-i", verb, what, "--as", sa, check=False).stdout.strip()
            assert out == allowed, (verb, what, out)
        token = kube.get("-n", ns, "secret", "podshark-token")["data"]["token"]
        tls = kube.get("-n", ns, "secret", "podshark-tls")["data"]
        assert set(tls) == {"ca.crt", "hub.crt", "hub.key", "worker.crt", "worker.key"}
        tap(*kc, "--timeout", "1", "--no-ui", check=False)  # re-run: the same token, not a new one
        assert kube.get("-n", ns, "secret", "podshark-token")["data"]["token"] == token
        assert kube.get("-n", ns, "secret", "podshark-tls")["data"] == tls  # and the same certificates
        kube.kubectl("-n", ns, "patch", "secret", "podshark-tls", "--type=json",
                     "-p", '[{"op": "remove", "path": "/data/worker.key"}]')  # fmt: skip
        r = tap(*kc, "--timeout", "1", "--no-ui", check=False)  # a damaged Secret is replaced, saying why
        assert "cannot be kept (it lacks worker.key)" in r.stderr, r.stderr[-2000:]
        renewed = kube.get("-n", ns, "secret", "podshark-tls")["data"]
        assert renewed.get("worker.key") and renewed["ca.crt"] != tls["ca.crt"]
    finally:
        clean = subprocess.run(
            [PODSHARK, "clean", *kc, "--wait", "120"], cwd=REPO, capture_output=True, text=True, timeout=180,
            check=False,
        )  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert (
        f"deleted clusterrole/podshark-worker-{ns}" in clean.stderr
        and f"deleted namespace/{ns}" in clean.stderr
    )
    wait_for(lambda: kube.get_or_none("namespace", ns) is None, what=f"namespace {ns} gone")
    assert kube.get_or_none("clusterrolebinding", f"podshark-worker-{ns}") is None
    again = subprocess.run(
        [PODSHARK, "clean", *kc, "--wait", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0 and "nothing of podshark" in again.stderr


def test_patch_merges_by_name_and_says_what_it_cannot_find(tmp_path: Path) -> None:
    patch = tmp_path / "patch.yaml"
    patch.write_text(
        "kind: DaemonSet\nmetadata: {name: podshark-worker}\nspec:\n  template:\n    spec:\n"
        "      priorityClassName: null\n"
        "      nodeSelector: {pool: capture}\n"
        "      containers:\n        - name: worker\n          env: [{name: EXTRA, value: '1'}]\n"
        "      volumes:\n        - {name: state, hostPath: {path: /srv/podshark}}\n"
    )
    worker = by_kind(dry_run("--patch", str(patch), "--namespace", "p1"), "DaemonSet")["spec"]["template"][
        "spec"
    ]
    assert "priorityClassName" not in worker and worker["nodeSelector"] == {"pool": "capture"}
    env = worker["containers"][0]["env"]
    assert [e["name"] for e in env] == ["NODE_NAME", "EXTRA"]  # merged by name, the original kept
    (state,) = [v for v in worker["volumes"] if v["name"] == "state"]
    assert state["hostPath"] == {"path": "/srv/podshark", "type": "DirectoryOrCreate"}
    assert [v["name"] for v in worker["volumes"]] == ["state", "token", "tls"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Deployment\nmetadata: {name: nope}\n")
    r = tap("--dry-run", "--patch", str(bad), check=False)
    assert r.returncode == 2 and "Deployment/nope, which is not among the manifests" in r.stderr
    bad.write_text("just: text\n")
    r = tap("--dry-run", "--patch", str(bad), check=False)
    assert r.returncode == 2 and "needs kind and metadata.name" in r.stderr
