"""Which grants are root on the host, or close to it, and which listeners expose them (pure).

One classification serves ``dockgate policy lint``, the WARNING lines ``serve``
logs at start and after a SIGHUP reload, ``dockgate audit`` and the note
``dockgate check`` adds to an ALLOWED verdict, so the four never disagree.

A grant is dangerous when it allows one of ``DANGEROUS``'s operations and
carries none of the constraints that keep that operation harmless. Constraints
are recognised by the grant's attributes (``CONSTRAINTS``): ``create_deny`` must
cover every check of ``ROOT_CREATE_CHECKS`` for ``container.create``; for the
other operations any constraint attribute the policy model defines for them
(``exec_rules`` for exec bodies, ``volume_deny`` for volume driver options) that is
set marks the grant as judged. An attribute the model does not have yet counts as
absent, so a grant is flagged until the model can constrain it.

Exposure: a plain ``tcp://`` listener on an address other than loopback serves
the API, unauthenticated and unencrypted, to every host that can reach the port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from dockgate import compat
from dockgate.decision import Decider
from dockgate.hazards import CONSTRAINTS, DANGEROUS, ROOT, ROOT_CREATE_CHECKS
from dockgate.policy_decider import CREATE_OPERATION, Grant, PolicyDecider
from dockgate.policy_match import normalize_listener

__all__ = ["DANGEROUS", "ROOT_CREATE_CHECKS", "allowed_note", "decider_dangers",
           "exposed", "exposure_warnings", "grant_dangers", "listener_report",
           "ping_warnings", "policy_dangers", "policy_report"]

# Operations every Docker client needs before anything else: the docker CLI pings to
# negotiate the API version; without it an allowed call still fails.
PING = "system.ping"


def grant_dangers(grant: Grant) -> list[tuple[str, str]]:
    """The dangerous operations this grant allows unconstrained: (operation, why)."""
    found = []
    for operation in sorted(grant.operations & DANGEROUS.keys()):
        why = DANGEROUS[operation]
        if operation == CREATE_OPERATION:
            missing = ROOT_CREATE_CHECKS - (grant.create_deny or frozenset())
            if not missing:
                continue
            if grant.create_deny:
                why += f" (its create: deny: leaves out {', '.join(sorted(missing))})"
        elif any(getattr(grant, name, None) is not None
                 for name in CONSTRAINTS.get(operation, ())):
            continue
        found.append((operation, why))
    return found


def _scope(grant: Grant) -> str:
    if grant.containers is not None:
        return f" of containers with {grant.containers.describe()}"
    if grant.images is not None:
        return f" of images {', '.join(grant.images)}"
    return ""


def policy_dangers(decider: PolicyDecider) -> list[str]:
    """``WHERE: DANGER: ...`` for every dangerous grant of every policy."""
    lines = []
    for policy in decider.policies.values():
        for grant in policy.grants:
            for operation, why in grant_dangers(grant):
                lines.append(f"{grant.where}: DANGER: policy {policy.name!r} grant "
                             f"{grant.number} allows {operation}{_scope(grant)}: {why}")
    return lines


def ping_warnings(decider: PolicyDecider) -> list[str]:
    """A policy that grants something but not system.ping breaks the docker CLI."""
    lines = []
    for policy in decider.policies.values():
        if PING not in policy.index:
            where = policy.grants[0].where
            lines.append(f"{where}: policy {policy.name!r} does not allow {PING}: the docker "
                         "CLI pings first to pick the API version, so its allowed calls "
                         f"fail too; add {PING} to a grant")
    return lines


def compat_dangers(decider: compat.TecnativaDecider) -> list[str]:
    """``DANGER: VARIABLE allows OPERATION: why`` for the dangerous routes the variables open."""
    seen: dict[str, list[str]] = {}
    for route, variable in compat.granted_routes(decider):
        if route.operation in DANGEROUS:
            variables = seen.setdefault(route.operation, [])
            if variable not in variables:
                variables.append(variable)
    return [f"DANGER: {' and '.join(variables)} allows {operation} for any container or "
            f"body: {DANGEROUS[operation]}" for operation, variables in seen.items()]


def decider_dangers(decider: Decider) -> list[str]:
    """The DANGER lines of any decider ``serve`` can build."""
    if isinstance(decider, PolicyDecider):
        return policy_dangers(decider)
    if isinstance(decider, compat.TecnativaDecider):
        return compat_dangers(decider)
    return []


def allowed_note(decider: Decider, operation: str, rule: str) -> str | None:
    """For ``check``: why an ALLOWED verdict is dangerous, or None."""
    if operation not in DANGEROUS:
        return None
    if isinstance(decider, PolicyDecider):
        for policy in decider.policies.values():
            for grant in policy.grants:
                if grant.rule == rule:
                    found = dict(grant_dangers(grant))
                    return (f"DANGER: {found[operation]}" if operation in found else None)
        return None
    return f"DANGER: {rule} allows it for any container or body: {DANGEROUS[operation]}"


# ---------------------------------------------------------------------------
# Exposure of listeners

SAFE_FORMS = ("a unix:///PATH socket, tcp://127.0.0.1:PORT, tls://HOST:PORT with "
              "--tls-ca (client certificates), or a port reachable only on an internal "
              "compose network")


def exposed(url: str) -> bool:
    """A plain-TCP listener on an address other than loopback."""
    parts = urlsplit(url)
    if parts.scheme != "tcp":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: whatever it resolves to, assume it is reachable


def _operations_on(decider: Decider, url: str) -> tuple[list[str], list[str]]:
    """What a client on listener ``url`` can reach: (operations, dangerous ones)."""
    if isinstance(decider, PolicyDecider):
        names = {rule.policy for rule in decider.clients
                 if not rule.listeners or normalize_listener(url) in rule.listeners}
        chosen = decider.listeners.get(normalize_listener(url), decider.default)
        if chosen is not None:
            names.add(chosen)
        operations: set[str] = set()
        risky: set[str] = set()
        for name in names:
            for grant in decider.policies[name].grants:
                operations |= grant.operations
                risky |= {op for op, _ in grant_dangers(grant)}
        return sorted(operations), sorted(risky)
    if isinstance(decider, compat.TecnativaDecider):
        routes_ = compat.granted_routes(decider)
        ops = sorted({route.operation for route, _ in routes_})
        return ops, sorted(op for op in ops if op in DANGEROUS)
    return [], []


def _listing(operations: Sequence[str], limit: int = 8) -> str:
    if not operations:
        return "nothing"
    if len(operations) <= limit:
        return ", ".join(operations)
    return f"{', '.join(operations[:limit])} and {len(operations) - limit} more"


def exposure_warnings(listeners: Iterable[str], decider: Decider) -> list[str]:
    """One line per plain-TCP listener on a non-loopback address, naming what it grants."""
    lines = []
    for url in listeners:
        if not exposed(url):
            continue
        operations, risky = _operations_on(decider, url)
        grants = f"it grants {_listing(operations)}"
        if risky:
            rest = [op for op in operations if op not in risky]
            grants = (f"it grants {', '.join(risky)} ({ROOT} or close to it, for anyone who "
                      f"can connect)" + (f" and {_listing(rest)}" if rest else ""))
        lines.append(f"listener {url} serves the Docker API in plain HTTP, without "
                     f"authentication, to every host that can reach this port: {grants}. "
                     f"Safe forms: {SAFE_FORMS}")
    return lines


# ---------------------------------------------------------------------------
# The audit report of a policy decider (files, presets, the environment policy)


def _grant_text(grant: Grant) -> str:
    text = ", ".join(sorted(grant.operations)) + _scope(grant)
    for rule in grant.query:
        text += f"; only {rule.param}={' or '.join(sorted(rule.values))}"
    if grant.create_deny is not None:
        text += f"; create denies {', '.join(sorted(grant.create_deny))}"
    if grant.redact:
        text += f"; answers without {', '.join(sorted(grant.redact))} values"
    return text


def _bindings(decider: PolicyDecider, name: str) -> list[str]:
    found = [f"clients matching {rule.name or rule.label}" for rule in decider.clients
             if rule.policy == name]
    found += [f"clients of listener {url}" for url, chosen in decider.listeners.items()
              if chosen == name]
    if decider.default == name:
        found.append("every other client (default)")
    return found


def policy_report(decider: PolicyDecider, listeners: Iterable[str]) -> str:
    """``dockgate audit`` for a policy decider: each policy, whom it binds, its grants, risks."""
    lines = [f"dockgate audit: what {decider.name} grants", ""]
    for policy in decider.policies.values():
        bound = _bindings(decider, policy.name)
        lines.append(f"policy {policy.name!r}, for {'; '.join(bound) or 'nobody'}:")
        lines.extend(f"  grant {grant.number} ({grant.where}): {_grant_text(grant)}"
                     for grant in policy.grants)
    lines.append("A client no rule binds and no default covers gets nothing.")
    risks = policy_dangers(decider) + ping_warnings(decider)
    lines += ["", "Risks:" if risks else "Risks: no grant is flagged."]
    lines.extend(f"  {risk}" for risk in risks)
    lines += listener_report(listeners, decider)
    return "\n".join(lines) + "\n"


def listener_report(listeners: Iterable[str], decider: Decider) -> list[str]:
    """The audit's listener section: a DANGER line per exposed listener."""
    lines = ["", "Listeners:"]
    for url in listeners:
        lines.extend([f"  DANGER: {warning}" for warning in exposure_warnings([url], decider)]
                     or [f"  {url}: not reachable in plain HTTP from other hosts"])
    return lines
