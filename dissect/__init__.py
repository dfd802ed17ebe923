"""Pure, sans-IO dissection: capture files and frames in, `Call` records out.

Imports nothing else of podshark, and nothing that does network I/O, asyncio, DuckDB or Textual.
Entry points: `dissect.engine.Engine` (frames in, calls out) and `dissect.engine.dissect_path`.
"""
