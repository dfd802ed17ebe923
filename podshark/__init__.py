"""podshark: full-payload traffic analyzer for Kubernetes (the command line and stage wiring).

Kept light: subcommands import what they need when they run, so `podshark --help` is instant and
the hub image never imports Textual.
"""

__version__ = "0.1.0"
