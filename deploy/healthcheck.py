"""The dockgate image's HEALTHCHECK.

With DOCKGATE_ADMIN_LISTEN set (the image sets 127.0.0.1:9102): GET /readyz on
the admin listener, which no client policy governs; healthy (exit 0) when
dockgate answers 200, i.e. it runs and the daemon answers /_ping. A wildcard
host is reached through loopback.

With DOCKGATE_ADMIN_LISTEN set to the empty string: GET /_ping through the
proxy on the first entry of DOCKGATE_LISTEN (unix:///PATH or tcp://HOST:PORT),
else dockgate's default tcp port 2375; healthy only when the proxy answers 200
"OK", so the policy of that listener must admit system.ping.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import sys
from urllib.parse import urlsplit

TIMEOUT = 3.0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("dockgate", timeout=TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.socket_path)


def connections(listen: str) -> list[http.client.HTTPConnection]:
    parts = urlsplit(listen.split(",", maxsplit=1)[0].strip())
    if parts.scheme == "unix":
        return [UnixConnection(parts.path)]
    port = parts.port or 2375
    host = parts.hostname or "127.0.0.1"
    hosts = ["127.0.0.1", "::1"] if host in ("0.0.0.0", "::") else [host]
    if parts.scheme == "tls":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # liveness only: the proxy's own listener
        return [http.client.HTTPSConnection(h, port, timeout=TIMEOUT, context=context)
                for h in hosts]
    return [http.client.HTTPConnection(h, port, timeout=TIMEOUT) for h in hosts]


def main() -> int:
    admin = os.environ.get("DOCKGATE_ADMIN_LISTEN")
    if admin:
        listen, target = f"tcp://{admin}", "/readyz"
    else:
        listen, target = os.environ.get("DOCKGATE_LISTEN") or "tcp://[::]:2375", "/_ping"
    problems = []
    for connection in connections(listen):
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            body = response.read(256)
        except OSError as error:
            problems.append(f"{connection.host}: {error}")
            continue
        finally:
            connection.close()
        if response.status == 200 and (target == "/readyz" or body == b"OK"):
            return 0
        problems.append(f"{connection.host}: {response.status} {body[:256]!r}")
    print(f"dockgate unhealthy on {listen}{target}: {'; '.join(problems)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
