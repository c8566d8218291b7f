"""The one settings table: it generates the ``serve`` flags, the environment
lookups and the ``--help`` text, and parses every value with an error that
names the variable and the value.

Precedence: command-line flag, then environment variable, then default.
Tecnativa's own variable names (``SOCKET_PATH``, ``LOG_LEVEL``,
``DISABLE_IPV6``) are kept so dockgate is a drop-in; dockgate's own settings use
the ``DOCKGATE_`` prefix. The access-policy variables (``CONTAINERS``, ``POST``,
``ALLOW_*``...) are not settings: ``compat`` reads them.
"""

from __future__ import annotations

import argparse
import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dockgate.errors import ConfigError

LOG_LEVELS = {
    # HAProxy/syslog names Tecnativa documents, mapped onto Python's levels.
    "debug": "DEBUG",
    "info": "INFO",
    "notice": "INFO",
    "warning": "WARNING",
    "err": "ERROR",
    "error": "ERROR",
    "crit": "CRITICAL",
    "critical": "CRITICAL",
    "alert": "CRITICAL",
    "emerg": "CRITICAL",
}


def _text(value: str) -> str:
    return value


def _host_port(value: str) -> str:
    if not value:
        return value  # set empty: off, as unset (the image's healthcheck relies on it)
    host, colon, port = value.rpartition(":")
    if "://" in value or not colon or not host or not port.isdigit():
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9102 (no tcp:// in front)")
    return value


def _positive_float(value: str) -> float:
    problem = "must be a finite number greater than 0"
    try:
        number = float(value)
    except ValueError:
        raise ValueError(problem) from None
    # float() also reads "nan" and "inf": neither is a usable number of seconds.
    if not 0 < number < math.inf:
        raise ValueError(problem)
    return number


def _positive_int(value: str) -> int:
    problem = "must be a whole number greater than 0"
    try:
        number = int(value, 10)
    except ValueError:
        raise ValueError(problem) from None
    if number <= 0:
        raise ValueError(problem)
    return number


def _octal_mode(value: str) -> int:
    problem = "must be an octal file mode such as 660"
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(problem) from None
    if not 0 <= mode <= 0o777:
        raise ValueError(problem)
    return mode


def _log_level(value: str) -> str:
    try:
        return LOG_LEVELS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}") from None


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        raise ValueError("must be 'text' or 'json'")
    return value


def _audit_mode(value: str) -> str:
    mode = value.strip().lower()
    if mode not in ("on", "denials", "off"):
        raise ValueError("must be 'on', 'denials' or 'off'")
    return mode


def _compat(value: str) -> str:
    if value not in ("tecnativa", "linuxserver"):
        raise ValueError("must be 'tecnativa' or 'linuxserver'")
    return value


def _yes_no(value: str) -> bool:
    # DISABLE_IPV6 as Tecnativa's start script reads it: 1, true or yes; anything
    # else is "off" there, so a drop-in must not refuse to start on it
    # (load_warnings names such values instead).
    return value.strip().lower() in TRUE_WORDS


TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("", "0", "false", "no")


def _strict_bool(value: str) -> bool:
    # For dockgate's own switches: a typo must not silently mean "off" (or "on").
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError("must be 1/true/yes or 0/false/no")


def _listen_list(value: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in value.split(",") if part.strip())
    for item in items:
        if not item.startswith(("tcp://", "unix://", "tls://", "fd://")):
            raise ValueError(f"{item!r} must start with tcp://, tls://, unix:// or fd://")
    return items


@dataclass(frozen=True)
class Setting:
    name: str                  # attribute on Settings
    env: str                   # environment variable
    flag: str                  # command-line flag
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"


TABLE: tuple[Setting, ...] = (
    Setting("listen", "DOCKGATE_LISTEN", "--listen", _listen_list, None,
            "where to accept clients, comma-separated or repeated: tcp://HOST:PORT, "
            "tls://HOST:PORT (needs --tls-cert/--tls-key), unix:///PATH, fd:// or "
            "fd://NAME (sockets from systemd socket activation) "
            "[default: tcp://[::]:2375, or tcp://0.0.0.0:2375 with DISABLE_IPV6]", "URL"),
    Setting("disable_ipv6", "DISABLE_IPV6", "--disable-ipv6", _yes_no, False,
            "listen on IPv4 only by default (1/true/yes)", "BOOL"),
    Setting("socket_path", "SOCKET_PATH", "--socket-path", _text, "/var/run/docker.sock",
            "the Docker daemon's unix socket", "PATH"),
    Setting("upstream", "DOCKGATE_UPSTREAM", "--upstream", _text, None,
            "the daemon as unix:///PATH or tcp://HOST:PORT; overrides --socket-path", "URL"),
    Setting("socket_mode", "DOCKGATE_SOCKET_MODE", "--socket-mode", _octal_mode, 0o660,
            "file mode of unix listener sockets, octal", "MODE"),
    Setting("socket_owner", "DOCKGATE_SOCKET_OWNER", "--socket-owner", _text, None,
            "owner (user name or uid) of unix listener sockets", "USER"),
    Setting("socket_group", "DOCKGATE_SOCKET_GROUP", "--socket-group", _text, None,
            "group (name or gid) of unix listener sockets", "GROUP"),
    Setting("policy", "DOCKGATE_POLICY", "--policy", _text, None,
            "YAML policy file, or preset:NAME for a shipped preset (restart-only, "
            "monitoring, dozzle, traefik, watchtower); without it ALLOW_RESTART_CONTAINERS, "
            "else the Tecnativa variables (CONTAINERS, POST, ALLOW_RESTARTS...) decide",
            "FILE"),
    Setting("compat", "DOCKGATE_COMPAT", "--compat", _compat, "tecnativa",
            "which proxy's variables to honour without a policy file: tecnativa or "
            "linuxserver", "NAME"),
    Setting("log_level", "LOG_LEVEL", "--log-level", _log_level, "INFO",
            "debug, info, notice, warning, err, crit, alert or emerg", "LEVEL"),
    Setting("log_format", "DOCKGATE_LOG_FORMAT", "--log-format", _log_format, "text",
            "text or json, for diagnostics and the per-request line", "FORMAT"),
    Setting("audit", "DOCKGATE_AUDIT", "--audit", _audit_mode, None,
            "the audit trail, whatever LOG_LEVEL says: on (every request), denials (denied "
            "and failed requests), off [default: denials always, allowed requests when "
            "LOG_LEVEL is info or debug]", "MODE"),
    Setting("audit_file", "DOCKGATE_AUDIT_FILE", "--audit-file", _text, None,
            "append the audit trail to this file instead of stderr", "PATH"),
    Setting("max_header_bytes", "DOCKGATE_MAX_HEADER_BYTES", "--max-header-bytes",
            _positive_int, 65536, "largest request head accepted (431 above)", "BYTES"),
    Setting("max_inspect_bytes", "DOCKGATE_MAX_INSPECT_BYTES", "--max-inspect-bytes",
            _positive_int, 4 * 1024 * 1024,
            "largest request body a policy may inspect (413 above, never forwarded "
            "uninspected)", "BYTES"),
    Setting("header_timeout", "DOCKGATE_HEADER_TIMEOUT", "--header-timeout",
            _positive_float, 10.0, "seconds a client has to send a whole request head",
            "SECONDS"),
    Setting("idle_timeout", "DOCKGATE_IDLE_TIMEOUT", "--idle-timeout", _positive_float,
            120.0, "seconds an idle keep-alive client connection is kept", "SECONDS"),
    Setting("body_timeout", "DOCKGATE_BODY_TIMEOUT", "--body-timeout", _positive_float,
            60.0, "seconds a client may pause in the middle of a request body before it "
            "is answered 408 and the request is dropped (the daemon never sees it "
            "complete)", "SECONDS"),
    Setting("max_connections", "DOCKGATE_MAX_CONNECTIONS", "--max-connections",
            _positive_int, 16384, "client connections one process serves at once; one "
            "more is answered 503 and closed (each costs two descriptors and a little "
            "memory)", "N"),
    Setting("connect_timeout", "DOCKGATE_CONNECT_TIMEOUT", "--connect-timeout",
            _positive_float, 5.0, "seconds to connect to the daemon before answering 502",
            "SECONDS"),
    Setting("shutdown_grace", "DOCKGATE_SHUTDOWN_GRACE", "--shutdown-grace", _positive_float,
            10.0, "seconds in-flight requests get to finish on SIGTERM/SIGINT", "SECONDS"),
    Setting("tls_cert", "DOCKGATE_TLS_CERT", "--tls-cert", _text, None,
            "server certificate (PEM) for tls:// listeners", "FILE"),
    Setting("tls_key", "DOCKGATE_TLS_KEY", "--tls-key", _text, None,
            "server private key (PEM) for tls:// listeners", "FILE"),
    Setting("tls_ca", "DOCKGATE_TLS_CA", "--tls-ca", _text, None,
            "CA bundle; when set, tls:// clients must present a certificate it signed "
            "(the docker client's DOCKER_TLS_VERIFY setup)", "FILE"),
    Setting("workers", "DOCKGATE_WORKERS", "--workers", _positive_int, 1,
            "processes sharing the listeners (one per CPU core serves the most small "
            "requests)", "N"),
    Setting("metrics_listen", "DOCKGATE_METRICS_LISTEN", "--metrics-listen", _host_port, None,
            "HOST:PORT serving only /metrics (Prometheus; off when unset); --admin-listen "
            "serves /metrics too", "HOST:PORT"),
    Setting("admin_listen", "DOCKGATE_ADMIN_LISTEN", "--admin-listen", _host_port, None,
            "HOST:PORT of the admin listener, outside every policy: /healthz (alive), "
            "/readyz (the daemon answers /_ping), /metrics (off when unset)", "HOST:PORT"),
    Setting("admin_live", "DOCKGATE_ADMIN_LIVE", "--admin-live", _strict_bool, False,
            "serve the live decision view at /live on the admin listener (with one "
            "worker; a non-loopback admin address needs --admin-token-file)", "BOOL"),
    Setting("admin_token_file", "DOCKGATE_ADMIN_TOKEN_FILE", "--admin-token-file", _text,
            None, "file holding the bearer token the live view asks for", "FILE"),
    Setting("learn", "DOCKGATE_LEARN", "--learn", _text, None,
            "learn mode: append what each request used (client, operation, container, "
            "body features; no secrets) as JSON lines to FILE, for `dockgate policy "
            "suggest FILE`; decisions are unchanged", "FILE"),
    Setting("learn_allow_all", "DOCKGATE_LEARN_ALLOW_ALL", "--learn-allow-all", _strict_bool,
            False, "with --learn and no --policy: forward EVERY request while recording "
            "(root on the host; only for a trusted client on a test machine)", "BOOL"),
    Setting("learn_max_bytes", "DOCKGATE_LEARN_MAX_BYTES", "--learn-max-bytes",
            _positive_int, 64 * 1024 * 1024,
            "size at which the --learn file stops growing (recording stops, serving goes "
            "on)", "BYTES"),
)


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, ...] | None
    disable_ipv6: bool
    socket_path: str
    upstream: str | None
    socket_mode: int
    socket_owner: str | None
    socket_group: str | None
    policy: str | None
    compat: str
    log_level: str
    log_format: str
    audit: str | None
    audit_file: str | None
    max_header_bytes: int
    max_inspect_bytes: int
    header_timeout: float
    idle_timeout: float
    body_timeout: float
    max_connections: int
    connect_timeout: float
    shutdown_grace: float
    tls_cert: str | None
    tls_key: str | None
    tls_ca: str | None
    workers: int
    metrics_listen: str | None
    admin_listen: str | None
    admin_live: bool
    admin_token_file: str | None
    learn: str | None
    learn_allow_all: bool
    learn_max_bytes: int

    @property
    def listeners(self) -> tuple[str, ...]:
        """The listener URLs in effect, defaults applied."""
        if self.listen:
            return self.listen
        return ("tcp://0.0.0.0:2375",) if self.disable_ipv6 else ("tcp://[::]:2375",)

    @property
    def upstream_url(self) -> str:
        """The daemon URL in effect: --upstream, else unix://SOCKET_PATH."""
        return self.upstream or f"unix://{self.socket_path}"


def reference() -> str:
    """docs/settings.md's table: every setting, generated from this table."""
    rows = ["| Flag | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for setting in TABLE:
        default = "" if setting.default is None else f"`{_show(setting)}`"
        meaning = setting.help.replace("|", "\\|")
        rows.append(f"| `{setting.flag} {setting.metavar}` | `{setting.env}` | {default} | "
                    f"{meaning} |")
    return "\n".join(rows) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; the help names the environment variable."""
    group = parser.add_argument_group("settings (flag, else environment variable, else default)")
    for setting in TABLE:
        default = "" if setting.default is None else f" [default: {_show(setting)}]"
        # --listen may be repeated; every other flag is given once.
        action = "append" if setting.name == "listen" else "store"
        group.add_argument(setting.flag, dest=setting.name, metavar=setting.metavar,
                           action=action, default=None,
                           help=f"{setting.help} (env {setting.env}){default}")


def _show(setting: Setting) -> str:
    if setting.name == "socket_mode":
        return f"{setting.default:o}"
    return str(setting.default)


def load(args: argparse.Namespace | None, env: Mapping[str, str]) -> Settings:
    """Build Settings from parsed flags and the environment; ConfigError names what is wrong."""
    values: dict[str, Any] = {}
    for setting in TABLE:
        flag_value = args_value(args, setting.name)
        if isinstance(flag_value, list):
            flag_value = ",".join(flag_value)
        if flag_value is not None:
            values[setting.name] = _parse(setting, flag_value, setting.flag)
        elif setting.env in env:
            values[setting.name] = _parse(setting, env[setting.env], setting.env)
        else:
            values[setting.name] = setting.default
    if values["compat"] == "linuxserver" and args_value(args, "disable_ipv6") is None:
        # linuxserver's image reads DISABLE_IPV6 as on only when it is exactly "1".
        values["disable_ipv6"] = env.get("DISABLE_IPV6") == "1"
    settings = Settings(**values)
    if any(url.startswith("tls://") for url in settings.listeners) and not (
        settings.tls_cert and settings.tls_key
    ):
        raise ConfigError("a tls:// listener needs --tls-cert and --tls-key "
                          "(DOCKGATE_TLS_CERT, DOCKGATE_TLS_KEY)")
    if settings.admin_live and not settings.admin_listen:
        raise ConfigError("--admin-live (DOCKGATE_ADMIN_LIVE) serves the view on the admin "
                          "listener: add --admin-listen 127.0.0.1:PORT")
    if settings.admin_live and settings.workers > 1:
        # Each worker sees its own requests only; one page must show them all.
        raise ConfigError("--admin-live works with one worker only (DOCKGATE_WORKERS=1)")
    if settings.learn_allow_all and not settings.learn:
        raise ConfigError("--learn-allow-all (DOCKGATE_LEARN_ALLOW_ALL) forwards every "
                          "request and exists only for recording: add --learn FILE")
    if settings.learn_allow_all and settings.policy:
        raise ConfigError("--learn-allow-all and --policy both decide requests: record "
                          "under the policy (observe mode) or permissively, not both")
    return settings


def args_value(args: argparse.Namespace | None, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


def load_warnings(env: Mapping[str, str]) -> list[str]:
    """Values accepted for compatibility but probably not meant as read."""
    raw = env.get("DISABLE_IPV6")
    if raw is not None and raw.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
        return [f"DISABLE_IPV6={raw!r} is read as off (IPv6 stays enabled), as the proxy "
                "dockgate replaces reads it; write DISABLE_IPV6=1 to listen on IPv4 only"]
    return []


PREFIX = "DOCKGATE_"


def typo_warnings(env: Mapping[str, str], known: frozenset[str]) -> list[str]:
    """Variables that look like one of ``known`` (or carry dockgate's prefix) but are not.

    A misspelt variable is silently ignored by whatever reads the right name
    (``CONTAINER=1`` leaves CONTAINERS off; ``ALLOW_RESTART_CONTAINER=gw`` falls back
    to the Tecnativa defaults): say so. The bar is high (a 0.85 similarity, case
    ignored) so that ordinary variables of a container stay quiet.
    """
    warnings = []
    for name in sorted(env):
        if name in known:
            continue
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.85)
        if close:
            warnings.append(f"{name} is not a variable dockgate reads (did you mean "
                            f"{close[0]}?); it is ignored")
        elif name.startswith(PREFIX):
            names = sorted(k for k in known if k.startswith(PREFIX))
            warnings.append(f"{name} is not a variable dockgate reads; it is ignored "
                            f"(dockgate's own: {', '.join(names)})")
    return warnings


def _parse(setting: Setting, raw: str, source: str) -> Any:
    try:
        return setting.parse(raw)
    except ValueError as error:
        raise ConfigError(f"{source}={raw!r} is invalid: {error}") from None
