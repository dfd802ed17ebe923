"""The Textual terminal UI; it talks to the hub only through the hub's HTTP/WebSocket API.

May import `dissect` only (the model and the filter help; see ARCHITECTURE.md, "Layering").
"""
