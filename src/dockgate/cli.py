"""The ``dockgate`` command line: serve, audit, check, policy lint.

Each subcommand owns one function below. ``build_decider`` is the one place
that chooses how requests are decided: a policy file, else the
least-privilege variables (``ALLOW_RESTART_CONTAINERS``...), else the Tecnativa
(or linuxserver) variables, exactly as the proxy being replaced read them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence

from dockgate import (
    __version__,
    bodies,
    compat,
    danger,
    http1,
    learnlog,
    liveview,
    logs,
    metrics,
    policy,
    policy_learn,
    policy_suggest,
    probe,
    settings,
)
from dockgate.decision import AllowAll, Decider
from dockgate.errors import ConfigError
from dockgate.shell import audit, proxy

log = logging.getLogger("dockgate")

DESCRIPTION = """\
dockgate: a least-privilege proxy for the Docker Engine API.

It sits between a client and /var/run/docker.sock and forwards only the Docker
API operations the client's policy allows. Without a policy file it is a
drop-in for Tecnativa's docker-socket-proxy: same variables (CONTAINERS=1,
POST=1, ALLOW_RESTARTS=1...), same decisions, port 2375, but denials the docker
CLI can read.

examples:
  dockgate serve                                   # Tecnativa defaults: ping, version, events
  CONTAINERS=1 dockgate audit                      # what these variables really grant
  ALLOW_RESTART_CONTAINERS=gw dockgate serve       # only 'docker restart gw'
  dockgate serve --policy policy.yaml              # per-client least-privilege policies
  dockgate check --policy policy.yaml POST /containers/gw/restart
"""


def build_decider(config: settings.Settings, env: Mapping[str, str]) -> Decider:
    """The decider the settings and environment ask for (ConfigError if invalid)."""
    decider, warnings = _decider(config, env)
    for warning in warnings:
        log.warning("%s", warning)
    return decider


def serving_decider(config: settings.Settings, env: Mapping[str, str]) -> Decider:
    """``build_decider``, and a policy's ``listeners:`` keys must name real listeners.

    A key that matches no listener silently sends its clients to the default (or to
    nothing): refuse it, naming the listeners there are (at start, and on reload).
    With an ``fd://`` listener the keys are not checked: the sockets systemd passes
    are named by their own addresses, known only once they are taken.
    """
    decider = build_decider(config, env)
    inherited = any(url.startswith("fd://") for url in config.listeners)
    if isinstance(decider, policy.PolicyDecider) and not inherited:
        unmatched = decider.unmatched_listeners(config.listeners)
        if unmatched:
            raise ConfigError(f"{decider.label}: listeners: {', '.join(unmatched)} "
                              f"{'matches' if len(unmatched) == 1 else 'match'} no listener; "
                              f"dockgate listens on {', '.join(config.listeners)} (--listen / "
                              "DOCKGATE_LISTEN): write the key as one of these")
    return decider


def _decider(config: settings.Settings, env: Mapping[str, str]) -> tuple[Decider, list[str]]:
    if config.learn_allow_all:
        return AllowAll(), [f"--learn-allow-all: forwarding EVERY request while recording to "
                            f"{config.learn} (root on the host)"]
    if config.policy:
        return policy.load_file(config.policy), []
    from_env = policy.from_env(env)
    if from_env is not None:
        return from_env, []
    return compat.decider_from_env(env, config.compat)


def _learning(config: settings.Settings, decider: Decider) -> Decider:
    """In learn mode (and for the live view), the decider wrapped so that every request's
    container and body are fetched for the record; the verdicts stay those of ``decider``."""
    return policy_learn.LearningDecider(decider) if config.learn or config.admin_live \
        else decider


def _announce(config: settings.Settings, env: Mapping[str, str], decider: Decider,
              defaults: bodies.DaemonDefaults) -> Decider:
    """Log what ``decider`` grants, dangers as WARNING lines (at start and after a reload).

    ``defaults``: what the daemon does by default (from the startup probe), against
    which create bodies are judged.
    """
    if isinstance(decider, policy.PolicyDecider):
        decider.daemon_defaults = defaults
    if isinstance(decider, compat.TecnativaDecider):
        log.info("%s", compat.risk_report(env, config.compat, warnings=False).rstrip())
    elif isinstance(decider, policy.PolicyDecider):
        log.info("%s", danger.policy_report(decider, ()).rstrip())
    for warning in danger.decider_dangers(decider):
        log.warning("%s", warning)
    for warning in danger.exposure_warnings(config.listeners, decider):
        log.warning("%s", warning)
    return decider


def known_variables() -> frozenset[str]:
    """Every variable dockgate reads: settings, access variables, the env policy."""
    return frozenset({setting.env for setting in settings.TABLE}
                     | set(compat.variables("linuxserver"))
                     | {policy.RESTART_VARIABLE, policy.INSPECT_VARIABLE})


def env_warnings(config: settings.Settings, env: Mapping[str, str],
                 decider: Decider) -> list[str]:
    """Typos, and Tecnativa variables that a policy makes irrelevant."""
    warnings = settings.typo_warnings(env, known_variables())
    if not isinstance(decider, compat.TecnativaDecider):
        ignored = [name for name in compat.variables(config.compat) if name in env]
        if ignored:
            why = (f"--policy {config.policy}" if config.policy else
                   policy.RESTART_VARIABLE if policy.RESTART_VARIABLE in env
                   else policy.INSPECT_VARIABLE)
            warnings.append(f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} "
                            f"set but ignored: {why} decides (the Tecnativa variables apply "
                            "only without a policy file and without "
                            f"{policy.RESTART_VARIABLE})")
    return warnings


def cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = settings.load(args, env)
    logs.configure(config.log_level, config.log_format)
    audit.configure(config.audit, config.audit_file,
                    verbose=logging.getLevelName(config.log_level) <= logging.INFO)
    for warning in settings.load_warnings(env):
        log.warning("%s", warning)
    decider = serving_decider(config, env)
    for warning in env_warnings(config, env, decider):
        log.warning("%s", warning)
    problems, defaults = probe.daemon(config)
    for warning in problems:
        log.warning("%s", warning)
    decider = _announce(config, env, decider, defaults)
    if config.learn:
        # Fail before serving when the recording cannot be written.
        learnlog.Recorder(config.learn, config.learn_max_bytes).close()
    liveview.configure(config)
    try:
        return proxy.run(config, _learning(config, decider), reload=lambda: _learning(
            config, _announce(config, env, serving_decider(config, env), defaults)))
    finally:
        metrics.cleanup()


def cmd_audit(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = settings.load(args, env)
    decider, _warnings = _decider(config, env)
    for warning in env_warnings(config, env, decider):
        print(f"WARNING: {warning}")
    if isinstance(decider, policy.PolicyDecider):
        print(danger.policy_report(decider, config.listeners), end="")
        return 0
    report = compat.risk_report(env, config.compat)
    listeners = danger.listener_report(config.listeners, decider)
    print(report + "\n".join(listeners) + "\n", end="")
    return 0


def cmd_check(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = settings.load(args, env)
    decider = build_decider(config, env)
    report, allowed = policy.explain(decider, args.method, args.target, client=args.client)
    print(report)
    return 0 if allowed else 1


def cmd_policy_lint(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    problems = policy.lint_file(args.file)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"{args.file}: OK")
    return 0


def cmd_policy_suggest(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        with open(args.file, encoding="utf-8") as handle:
            recording = policy_suggest.read_recording(handle, args.file)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{args.file}: cannot read the recording ({error})") from None
    base = policy.read_text(args.base) if args.base else None
    suggestion = policy_suggest.suggest(recording, label=args.file, client=args.client,
                                        base=base)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(suggestion.text)
        print(f"{args.output}: written; check it with: dockgate policy lint {args.output}",
              file=sys.stderr)
    else:
        print(suggestion.text, end="")
    return 0


def access_help() -> str:
    """The access variables, for the ``serve``/``audit``/``check`` help (from the code)."""
    tecnativa = compat.variables("tecnativa")
    linuxserver = [name for name in compat.variables("linuxserver") if name not in tecnativa]
    defaults = ", ".join(sorted(compat.defaults("tecnativa")))
    return textwrap.dedent(f"""\
        access (the first of these that is set decides):
          --policy FILE | --policy preset:NAME
              a least-privilege policy file (docs/policies.md)
          {policy.RESTART_VARIABLE}=a,b
              restart of exactly these containers, plus ping and version;
              {policy.INSPECT_VARIABLE}=a,b adds inspect of them
          Tecnativa's variables, on only as a non-zero integer (1) as HAProxy reads
          them; {defaults} are on by default:
        """) + textwrap.fill(" ".join(tecnativa), width=78, initial_indent="      ",
                             subsequent_indent="      ") + "\n" + textwrap.fill(
        "with --compat linuxserver also: " + " ".join(linuxserver), width=78,
        initial_indent="      ", subsequent_indent="      ") + "\n"


def build() -> str:
    """Which build this is: ``compiled with mypyc`` (``DOCKGATE_COMPILE=1 pip install .``:
    the data plane as C extensions) or ``pure Python``, the default."""
    # http1 is one of the compiled modules (build_backend/dockgate_build.py lists them).
    return "pure Python" if http1.__file__.endswith(".py") else "compiled with mypyc"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dockgate", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version",
                     version=f"dockgate {__version__} ({build()})")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy",
                           description="Run the proxy until SIGTERM/SIGINT; SIGHUP reloads "
                           "the policy (an invalid new policy keeps the old one).",
                           epilog=access_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    audit = sub.add_parser("audit", help="print what serve would really grant",
                           description="Build the decider `serve` would build (policy file "
                           "or preset, ALLOW_RESTART_CONTAINERS, else the Tecnativa variables) "
                           "and print, in plain words, what it allows, flagging grants that "
                           "are root on the host or close to it and listeners other hosts "
                           "reach in plain HTTP (DANGER lines). Serves nothing.",
                           epilog=access_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_arguments(audit)
    audit.set_defaults(handler=cmd_audit)

    check = sub.add_parser("check", help="explain how one request would be decided",
                           description="Classify METHOD TARGET, decide it under the "
                           "configured policy and explain why. Exit 0 if allowed, 1 if not. "
                           "Container references are shown unresolved (no daemon is asked).")
    check.add_argument("method", metavar="METHOD", help="e.g. POST")
    check.add_argument("target", metavar="TARGET", help="e.g. /v1.41/containers/gw/restart")
    check.add_argument("--client", default=None,
                       help="who asks, comma-separated parts: an IP address, uid=N, gid=N, "
                       "cn=NAME, san=NAME, listener=URL; the container it is: "
                       "container=NAME, service=NAME (compose), project=NAME "
                       "[default: 127.0.0.1]")
    settings.add_arguments(check)
    check.set_defaults(handler=cmd_check)

    policy_cmd = sub.add_parser("policy", help="policy file tools")
    policy_sub = policy_cmd.add_subparsers(dest="policy_command", required=True,
                                           metavar="ACTION")
    lint = policy_sub.add_parser("lint", help="validate a policy file, with line numbers")
    lint.add_argument("file", metavar="FILE")
    lint.set_defaults(handler=cmd_policy_lint)
    suggest = policy_sub.add_parser(
        "suggest", help="write the least-privilege policy of a learn recording",
        description="Read a recording of `dockgate serve --learn FILE` and write a policy "
        "that allows what was recorded and nothing more: per client, the operations used, "
        "the containers by shared labels or exact names, images by exact reference, "
        "create constraints as tight as the recorded bodies allow. Each grant says how "
        "many requests it covers and when, and DANGER where the workload needed host "
        "access.",
        epilog="examples:\n"
        "  dockgate serve --learn rec.jsonl --learn-allow-all yes   # record a trusted run\n"
        "  dockgate policy suggest rec.jsonl -o policy.yaml\n"
        "  dockgate serve --learn rec.jsonl --policy policy.yaml     # observe mode\n"
        "  dockgate policy suggest rec.jsonl --from policy.yaml      # add what it denied\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    suggest.add_argument("file", metavar="FILE", help="the --learn recording (JSON lines)")
    suggest.add_argument("--client", default=None, metavar="SPEC",
                         help="only this client: an IP address, uid=N, gid=N, cn=NAME, "
                         "listener=URL, comma-separated (all parts must match)")
    suggest.add_argument("--from", dest="base", default=None, metavar="POLICY",
                         help="an existing policy file (or preset:NAME): keep it and add "
                         "grants only for the requests it denied")
    suggest.add_argument("-o", "--output", default=None, metavar="OUT",
                         help="write the policy to OUT instead of standard output")
    suggest.set_defaults(handler=cmd_policy_suggest)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.handler(args, os.environ)
    except ConfigError as error:
        print(f"dockgate: {error}", file=sys.stderr)
        return 2
    return code
