"""Kubernetes identity tests against the real lab in tests/k8slab/ (see conftest.py)."""
