"""`python -m tests.capture.echo_http HOST PORT`: an HTTP/1.1 server whose answers name their request.

GET and POST answer 200 with ``path=<target>`` (and the POST body's length), so a test knows which
response belongs to which request by construction; ``/status/<code>`` answers that status.
Keep-alive is on (HTTP/1.1), so one client connection may carry many calls.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, extra: bytes = b"") -> None:
        status = 200
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
        body = b"path=" + self.path.encode() + extra
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self._answer(b" len=%d" % len(data))

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer((host, port), Handler).serve_forever()
