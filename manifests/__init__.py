"""The Kubernetes manifests (YAML beside this file, `kustomization.yaml` lists them) and the
Dockerfile. A package only so that an installed podshark carries the files `podshark tap`
renders; nothing here is code."""

from pathlib import Path

DIR = Path(__file__).resolve().parent
