"""`python -m podshark` is the same as the `podshark` command."""

from podshark.cli import main

raise SystemExit(main())
