"""`python -m tests.capture.tls_client HOST IP PORT N PREFIX`: N HTTPS GETs with Python's ssl module.

Two keep-alive connections (threads) share the requests; each request is ``PREFIX/<i>``. For every
request one JSON line: the target, the status, the body, and the connection's local and remote
address (the 4-tuple the tracer must report). Python's ssl hands OpenSSL a socket BIO (not
SSL_set_fd), so this client exercises the tracer's other way of finding the connection. The
certificate is not verified (the test's server has a self-signed one); SNI is HOST.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import threading


def main() -> None:
    host, ip, port, n, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    lock = threading.Lock()

    def worker(k: int) -> None:
        raw = socket.create_connection((ip, port), timeout=20)
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=20)
        conn.sock = ctx.wrap_socket(raw, server_hostname=host)  # SNI: HOST, the address: IP
        for i in range(k, n, 2):
            target = f"{prefix}/{i}"
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
            line = {
                "target": target,
                "status": resp.status,
                "body": body.decode("latin-1"),
                "local": list(conn.sock.getsockname()[:2]),
                "remote": list(conn.sock.getpeername()[:2]),
            }
            with lock:
                print(json.dumps(line), flush=True)
        conn.close()

    failed: list[BaseException] = []

    def run(k: int) -> None:
        try:
            worker(k)
        except BaseException as e:  # a failed connection must fail the run, not just its thread
            failed.append(e)
            raise

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.exit(f"tls_client: {failed[0]!r}")


if __name__ == "__main__":
    main()
