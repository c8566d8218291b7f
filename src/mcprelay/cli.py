"""The ``dockgate-mcp-relay`` command line: render, apply, restart, serve-hook."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from mcprelay.catalog import parse_servers, render_catalog
from mcprelay.dockerhttp import endpoint_from_env
from mcprelay.errors import InputError, RelayError
from mcprelay.hook import DEFAULT_MAX_BODY, HookServer
from mcprelay.relay import DEFAULT_DISPLAY_NAME, Relay, RelayConfig
from mcprelay.restart import DEFAULT_GATEWAY, READINESS_MODES, Restarter, RestartOptions
from mcprelay.state import parse_document

log = logging.getLogger("mcprelay")

MAX_INPUT_BYTES = 1024 * 1024

DESCRIPTION = """\
dockgate-mcp-relay: publish the approved MCP servers to the Docker MCP gateway.

It validates the approved servers, writes the gateway's catalog (YAML, mode
0600, replaced atomically) and the secrets env file, then restarts the gateway
container through the Docker API (DOCKER_HOST, e.g. a restart-only dockgate)
and reports success only when the gateway runs again.

examples:
  dockgate-mcp-relay render servers.yaml
  DOCKER_HOST=tcp://dockgate:2375 dockgate-mcp-relay apply servers.yaml \\
      --catalog /mcp_config/docker-mcp.yaml --env-file /mcp_config/secrets.env
  dockgate-mcp-relay serve-hook --listen 127.0.0.1:8765 --state /var/lib/relay/state.json \\
      --catalog /mcp_config/docker-mcp.yaml --env-file /mcp_config/secrets.env
  curl -H 'Content-Type: application/json' -d '{"event": "approved", "server":
      {"name": "github", "image": "mcp/github:latest"}}' http://127.0.0.1:8765/events

input: a list of servers (or {"servers": [...]}) in JSON or YAML; each server has
  name (^[a-z0-9][a-z0-9-]{0,62}$), image (a Docker reference, tag and/or
  @sha256 digest), optional title, description and secrets [{name, env, value}].

environment: DOCKER_HOST (unix:///PATH or tcp://HOST:PORT; default
  unix:///var/run/docker.sock), DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.

exit codes: 0 ok · 2 usage · 10 invalid input (nothing written) · 11 write
  failed · 20 denied by the proxy · 21 gateway container missing · 22 Docker
  API unreachable · 23 daemon error · 24 timeout · 25 gateway not running again
"""


def add_output_arguments(parser: argparse.ArgumentParser, *, state_required: bool) -> None:
    group = parser.add_argument_group("files")
    group.add_argument("--catalog", type=Path, required=True, metavar="PATH",
                       help="the gateway's catalog file, e.g. /mcp_config/docker-mcp.yaml")
    group.add_argument("--env-file", type=Path, metavar="PATH",
                       help="secrets env file (secret-name=value lines); required when a "
                            "server declares secrets")
    group.add_argument("--images-file", type=Path, metavar="PATH",
                       help="the approved images, one a line, for dockgate's images_from: "
                            "(the gateway may run these and nothing else)")
    group.add_argument("--state", type=Path, required=state_required, metavar="PATH",
                       help="JSON file holding the approved set between events")
    group.add_argument("--display-name", default=DEFAULT_DISPLAY_NAME, metavar="TEXT",
                       help=f"the catalog's displayName [default: {DEFAULT_DISPLAY_NAME}]")


def add_restart_arguments(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    group = parser.add_argument_group("gateway restart (through DOCKER_HOST)")
    if optional:
        group.add_argument("--no-restart", action="store_true",
                           help="write the files only, do not restart the gateway")
    group.add_argument("--gateway", default=DEFAULT_GATEWAY, metavar="NAME",
                       help=f"gateway container name [default: {DEFAULT_GATEWAY}]")
    group.add_argument("--stop-timeout", type=int, default=10, metavar="SECONDS",
                       help="seconds the daemon waits for the gateway to stop (?t=) [default: 10]")
    group.add_argument("--start-allowance", type=float, default=20.0, metavar="SECONDS",
                       help="extra seconds for the start; the HTTP timeout is stop timeout + "
                            "this [default: 20]")
    group.add_argument("--retries", type=int, default=4, metavar="N",
                       help="retries on unreachable proxy or 502/503/504 [default: 4]")
    group.add_argument("--backoff", type=float, default=0.5, metavar="SECONDS",
                       help="first retry delay, doubled each time, at most 8 s [default: 0.5]")
    group.add_argument("--readiness", choices=READINESS_MODES, default="inspect",
                       help="how 'running again' is confirmed: inspect (State.Running and a "
                            "newer StartedAt; needs container.inspect on the gateway) or none "
                            "(trust the restart's 204) [default: inspect]")
    group.add_argument("--ready-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for running/healthy after the restart [default: 60]")
    group.add_argument("--settle", type=float, default=1.0, metavar="SECONDS",
                       help="with readiness inspect: how long the gateway must stay running "
                            "(the same start) to count as running again, so that one that "
                            "exits on start is not reported ready [default: 1]")
    group.add_argument("--health-url", metavar="URL",
                       help="also wait until this http(s) URL answers 2xx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockgate-mcp-relay", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step to stderr")
    # The relay ships in the dockgate distribution: its version is the package's.
    parser.add_argument("--version", action="version",
                        version=f"dockgate-mcp-relay {metadata.version('dockgate')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render", help="validate servers and print the catalog",
                                 description="Validate the servers and print the catalog YAML.")
    render.add_argument("input", nargs="?", default="-", help="servers file or - for stdin")
    render.add_argument("--display-name", default=DEFAULT_DISPLAY_NAME, metavar="TEXT")

    apply = commands.add_parser(
        "apply", help="make a file's servers the approved set, restart the gateway",
        description="Validate the servers, write catalog/env/state files, restart the "
                    "gateway and wait until it runs again.")
    apply.add_argument("input", nargs="?", default="-", help="servers file or - for stdin")
    add_output_arguments(apply, state_required=False)
    add_restart_arguments(apply, optional=True)

    restart = commands.add_parser("restart", help="restart the gateway and wait for it",
                                  description="Restart the gateway and wait until it runs again.")
    add_restart_arguments(restart, optional=False)

    hook = commands.add_parser(
        "serve-hook", help="HTTP endpoint for approved/revoked events",
        description="Serve POST /events ({\"event\": \"approved\"|\"revoked\", \"server\": "
                    "{...}}) and GET /healthz; each event updates the state, the files and "
                    "restarts the gateway.")
    hook.add_argument("--listen", required=True, metavar="HOST:PORT",
                      help="address to listen on, e.g. 127.0.0.1:8765")
    hook.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                      help=f"largest accepted event body [default: {DEFAULT_MAX_BODY}]")
    hook.add_argument("--token-file", type=Path, metavar="PATH",
                      help="require 'Authorization: Bearer <contents of this file>'")
    add_output_arguments(hook, state_required=True)
    add_restart_arguments(hook, optional=True)
    return parser


def restart_options(args: argparse.Namespace) -> RestartOptions:
    return RestartOptions(gateway=args.gateway, stop_timeout=args.stop_timeout,
                          start_allowance=args.start_allowance, retries=args.retries,
                          backoff=args.backoff, readiness=args.readiness,
                          ready_timeout=args.ready_timeout, settle=args.settle,
                          health_url=args.health_url)


def relay_config(args: argparse.Namespace, env: Mapping[str, str]) -> RelayConfig:
    restart = None if args.no_restart else restart_options(args)
    return RelayConfig(catalog=args.catalog, env_file=args.env_file, state=args.state,
                       images_file=args.images_file,
                       display_name=args.display_name,
                       endpoint=None if restart is None else endpoint_from_env(env),
                       restart=restart)


def read_input(source: str, stdin: TextIO) -> object:
    if source == "-":
        text = stdin.read(MAX_INPUT_BYTES + 1)
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read(MAX_INPUT_BYTES + 1)
        except OSError as error:
            raise InputError(f"cannot read {source}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"{source} is not UTF-8 text") from None
    if len(text) > MAX_INPUT_BYTES:
        raise InputError(f"{source} is larger than {MAX_INPUT_BYTES} bytes")
    return parse_document(text, "stdin" if source == "-" else source)


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def run(args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO,
        stdout: TextIO) -> int:
    if args.command == "render":
        servers = parse_servers(read_input(args.input, stdin))
        stdout.write(render_catalog(servers, args.display_name))
        return 0
    if args.command == "restart":
        result = Restarter(endpoint_from_env(env), restart_options(args)).run()
        emit(stdout, {"status": "ok", "restarted": {"gateway": result.gateway,
                                                    "attempts": result.attempts,
                                                    "started_at": result.started_at}})
        return 0
    if args.command == "apply":
        servers = parse_servers(read_input(args.input, stdin))
        emit(stdout, Relay(relay_config(args, env)).apply(servers))
        return 0
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise InputError(f"cannot read --token-file: {error.strerror}") from None
        if not token:
            raise InputError("--token-file is empty")
    server = HookServer(parse_listen(args.listen), Relay(relay_config(args, env)),
                        max_body=args.max_body, token=token)
    log.info("listening on http://%s:%d/events", *server.server_address[:2])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def emit(stdout: TextIO, document: dict[str, Any]) -> None:
    stdout.write(json.dumps(document) + "\n")
    stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A hook server logs every event; the one-shot commands only warnings unless -v.
    verbose = args.verbose or args.command == "serve-hook"
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="dockgate-mcp-relay: %(message)s", stream=sys.stderr)
    try:
        return run(args, os.environ, sys.stdin, sys.stdout)
    except RelayError as error:
        print(f"dockgate-mcp-relay: {error.kind}: {error}", file=sys.stderr)
        return error.exit_code
