"""`podshark tap` and `podshark clean`: install podshark in a cluster, reach its hub, remove it.

render.py turns manifests/ into the objects for the chosen options; kube.py applies them, waits for
the rollout and deletes them; forward.py keeps a port-forward to the hub for the TUI.
"""
