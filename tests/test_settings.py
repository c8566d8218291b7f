"""The settings table: flags, environment, defaults, and errors that name the variable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from dockgate import settings
from dockgate.errors import ConfigError


def parse(argv: list[str], env: dict[str, str] | None = None) -> settings.Settings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.load(parser.parse_args(argv), env or {})


def test_defaults_are_tecnativas_port_and_socket() -> None:
    """A drop-in listens on 2375 dual-stack and talks to /var/run/docker.sock."""
    config = parse([])
    assert config.listeners == ("tcp://[::]:2375",)
    assert config.upstream_url == "unix:///var/run/docker.sock"
    assert config.max_header_bytes == 65536
    assert config.header_timeout == 10.0


def test_disable_ipv6_listens_on_ipv4_only() -> None:
    """Tecnativa's DISABLE_IPV6 accepts 1, true and yes."""
    for value in ("1", "true", "YES"):
        assert parse([], {"DISABLE_IPV6": value}).listeners == ("tcp://0.0.0.0:2375",)


def test_an_unusual_disable_ipv6_value_is_off_with_a_warning() -> None:
    """The replaced proxy starts with DISABLE_IPV6=on (as off): so must dockgate, but say so."""
    assert parse([], {"DISABLE_IPV6": "on"}).disable_ipv6 is False
    (warning,) = settings.load_warnings({"DISABLE_IPV6": "on"})
    assert "DISABLE_IPV6='on' is read as off" in warning
    assert settings.load_warnings({"DISABLE_IPV6": "1"}) == []


def test_linuxserver_reads_disable_ipv6_only_as_exactly_1() -> None:
    """linuxserver's image differs from Tecnativa's here; the variant follows it."""
    env = {"DOCKGATE_COMPAT": "linuxserver", "DISABLE_IPV6": "true"}
    assert parse([], env).disable_ipv6 is False
    assert parse([], {**env, "DISABLE_IPV6": "1"}).disable_ipv6 is True


def test_a_flag_wins_over_the_environment() -> None:
    """Precedence is flag, then environment, then default."""
    config = parse(["--socket-path", "/flag.sock"], {"SOCKET_PATH": "/env.sock"})
    assert config.socket_path == "/flag.sock"
    assert parse([], {"SOCKET_PATH": "/env.sock"}).socket_path == "/env.sock"


def test_listen_may_be_repeated_or_comma_separated() -> None:
    """Several listeners at once, from flags or from one variable."""
    assert parse(["--listen", "tcp://127.0.0.1:1", "--listen", "unix:///tmp/a.sock"]).listeners \
        == ("tcp://127.0.0.1:1", "unix:///tmp/a.sock")
    assert parse([], {"DOCKGATE_LISTEN": "tcp://127.0.0.1:1, unix:///tmp/a.sock"}).listeners \
        == ("tcp://127.0.0.1:1", "unix:///tmp/a.sock")


@pytest.mark.parametrize(("env", "expected"), [
    ({"DOCKGATE_LISTEN": "127.0.0.1:2375"},
     "DOCKGATE_LISTEN='127.0.0.1:2375' is invalid: '127.0.0.1:2375' must start with tcp://"),
    ({"DOCKGATE_HEADER_TIMEOUT": "0"}, "DOCKGATE_HEADER_TIMEOUT='0' is invalid: must be a finite"),
    ({"DOCKGATE_HEADER_TIMEOUT": "nan"}, "DOCKGATE_HEADER_TIMEOUT='nan' is invalid: must be "),
    ({"DOCKGATE_IDLE_TIMEOUT": "inf"}, "DOCKGATE_IDLE_TIMEOUT='inf' is invalid: must be "),
    ({"DOCKGATE_MAX_HEADER_BYTES": "lots"},
     "DOCKGATE_MAX_HEADER_BYTES='lots' is invalid: must be a whole number greater than 0"),
    ({"DOCKGATE_IDLE_TIMEOUT": "soon"},
     "DOCKGATE_IDLE_TIMEOUT='soon' is invalid: must be a finite number greater than 0"),
    ({"DOCKGATE_SOCKET_MODE": "rw"},
     "DOCKGATE_SOCKET_MODE='rw' is invalid: must be an octal file mode such as 660"),
    ({"DOCKGATE_SOCKET_MODE": "999"}, "DOCKGATE_SOCKET_MODE='999' is invalid"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL='verbose' is invalid: must be one of debug"),
    ({"DOCKGATE_COMPAT": "haproxy"}, "DOCKGATE_COMPAT='haproxy' is invalid"),
    ({"DOCKGATE_ADMIN_LISTEN": "tcp://127.0.0.1:9102"},
     "DOCKGATE_ADMIN_LISTEN='tcp://127.0.0.1:9102' is invalid: must be HOST:PORT, e.g. "
     "127.0.0.1:9102 (no tcp:// in front)"),
    ({"DOCKGATE_METRICS_LISTEN": "9102"}, "DOCKGATE_METRICS_LISTEN='9102' is invalid: must be "
     "HOST:PORT"),
])
def test_a_bad_value_is_an_error_naming_the_variable_and_the_value(
        env: dict[str, str], expected: str) -> None:
    """Never fall back silently to a default: say which variable holds what."""
    with pytest.raises(ConfigError) as caught:
        parse([], env)
    assert str(caught.value).startswith(expected)


def test_an_admin_listener_set_empty_is_off() -> None:
    """The image's healthcheck sets DOCKGATE_ADMIN_LISTEN= to turn the listener off."""
    assert parse([], {"DOCKGATE_ADMIN_LISTEN": ""}).admin_listen == ""
    assert parse(["--admin-listen", "[::1]:9102"]).admin_listen == "[::1]:9102"


def test_a_tls_listener_without_a_certificate_is_refused() -> None:
    """A tls:// listener cannot start without its key pair; the error says which settings."""
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key"):
        parse(["--listen", "tls://127.0.0.1:2376"])


def test_log_levels_accept_haproxy_names() -> None:
    """Tecnativa documents syslog level names; each maps onto a Python level."""
    assert parse([], {"LOG_LEVEL": "notice"}).log_level == "INFO"
    assert parse([], {"LOG_LEVEL": "err"}).log_level == "ERROR"
    assert parse([], {"LOG_LEVEL": "emerg"}).log_level == "CRITICAL"


def test_help_names_every_environment_variable() -> None:
    """--help teaches: each flag shows the variable that sets it."""
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for setting in settings.TABLE:
        assert f"env {setting.env}" in text



REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
REFERENCE_MARKER = "<!-- generated by tests/test_settings.py from settings.TABLE"


def test_the_settings_reference_page_is_the_table_s_own() -> None:
    """docs/settings.md lists every setting as the table defines it (regenerated, compared).

    ``DOCKGATE_REGENERATE=1`` rewrites the table in docs/settings.md.
    """
    text = REFERENCE.read_text()
    start = text.index("\n", text.index(REFERENCE_MARKER)) + 1
    end = text.index("\n\n", start) + 1
    table = settings.reference()
    if os.environ.get("DOCKGATE_REGENERATE") == "1" and text[start:end] != table:
        REFERENCE.write_text(text[:start] + table + text[end:])
        text = REFERENCE.read_text()
    assert text[start:end] == table, ("docs/settings.md is stale: run DOCKGATE_REGENERATE=1 "
                                      "pytest tests/test_settings.py")
    for setting in settings.TABLE:
        assert f"`{setting.env}`" in table
