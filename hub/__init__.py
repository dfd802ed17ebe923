"""The hub service: ingest, DuckDB store, query, live fan-out, replay, export and auth.

May import `dissect` only (see ARCHITECTURE.md, "Layering").
"""
