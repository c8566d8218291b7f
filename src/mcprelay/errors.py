"""The relay's one exception tree; each class carries its process exit code.

    RelayError (1)
    ├── InputError (10)               invalid approved-server data: nothing was written
    ├── WriteError (11)               the catalog, env or state file could not be written
    └── DockerError (29)              restarting the gateway failed
        ├── DeniedError (20)          the proxy answered 403; carries the proxy's message
        ├── GatewayMissingError (21)  404: no such container (never reported as success)
        ├── UnreachableError (22)     connection refused, socket missing, DNS, TLS
        ├── DaemonError (23)          5xx or another unexpected status
        ├── RequestTimeoutError (24)  no answer within the HTTP timeout (not retried: the
        │                             restart may still be under way)
        └── NotReadyError (25)        restarted, but not running again (or the health URL
                                      silent) before the readiness deadline

Exit code 2 stays argparse's "usage error".
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class: ``kind`` names the error class in JSON answers and logs."""

    exit_code = 1
    kind = "error"


class InputError(RelayError):
    exit_code = 10
    kind = "invalid_input"


class WriteError(RelayError):
    exit_code = 11
    kind = "write_failed"


class DockerError(RelayError):
    """``transient`` marks failures worth retrying; ``status`` is the HTTP status, if any."""

    exit_code = 29
    kind = "docker_error"

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


class DeniedError(DockerError):
    exit_code = 20
    kind = "denied"


class GatewayMissingError(DockerError):
    exit_code = 21
    kind = "gateway_missing"


class UnreachableError(DockerError):
    exit_code = 22
    kind = "unreachable"


class DaemonError(DockerError):
    exit_code = 23
    kind = "daemon_error"


class RequestTimeoutError(DockerError):
    exit_code = 24
    kind = "timeout"


class NotReadyError(DockerError):
    exit_code = 25
    kind = "not_ready"
