"""Debian's nginx as an HTTPS server for the TLS tests: one config template (HTTP/1.1 and HTTP/2 by
ALPN, everything under one temporary directory), filled with the test's own locations."""

from __future__ import annotations

NGINX_TLS_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    server {{
        listen {ip}:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {locations}
    }}
}}
"""


def nginx_tls_conf(workdir: object, ip: str, port: int, cert: object, key: object, locations: str) -> str:
    """The config text; ``locations`` are nginx ``location`` blocks (the answers the test expects)."""
    return NGINX_TLS_CONF.format(dir=workdir, ip=ip, port=port, cert=cert, key=key, locations=locations)
