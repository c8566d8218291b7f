"""Decision cost against policy size: 1 rule vs 1,000 rules should be within 2x.

Run: ``python bench/bench_policy.py [--rounds N]``. Prints the time per decision
for each size and their ratio, for three requests: a scoped restart answered
after the shell resolved the container (the common, most expensive path), an
operation the policy does not grant, and an unscoped ping. Not a pytest test:
timings belong in a report, not in a pass/fail gate on a shared CI machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from dockgate import policy, routes
from dockgate.decision import Client, ContainerFacts, Facts, Request

CLIENT = Client("tcp://127.0.0.1:2375", "tcp", address="127.0.0.1", port=40000)
OPERATIONS = ("container.restart", "container.stop", "container.start", "container.kill",
              "container.inspect", "container.logs", "container.pause", "container.unpause")


def policy_text(rules: int) -> str:
    """A policy with ``rules`` scoped grants spread over several operations."""
    lines = ["policies:", "  big:", "    grants:", "      - allow: [system.ping]"]
    for number in range(rules):
        operation = OPERATIONS[number % len(OPERATIONS)]
        lines += [f"      - allow: [{operation}]",
                  f"        containers: {{names: [c{number}]}}"]
    lines.append("default: big")
    return "\n".join(lines) + "\n"


def request(method: str, target: str) -> Request:
    parsed = routes.parse_target(target)
    return Request(method, parsed, routes.classify(method, parsed))


def restart_case(name: str) -> tuple[Request, Facts]:
    """A restart of ``name`` as the shell asks the second time, with the container resolved."""
    return (request("POST", f"/v1.41/containers/{name}/restart"),
            Facts(containers={name: ContainerFacts("f" * 64, name, {})}))


def per_decision(decider: policy.PolicyDecider, req: Request, facts: Facts,
                 rounds: int) -> float:
    """Best of five runs of ``rounds`` decisions, in microseconds per decision."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            decider.decide(CLIENT, req, facts)
        best = min(best, time.perf_counter() - start)
    return best / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description="policy decision cost: 1 vs 1,000 rules")
    parser.add_argument("--rounds", type=int, default=20000)
    args = parser.parse_args()
    small_rules, big_rules = 1, 1000
    # Both policies grant container.restart of the container asked for (c0 is rule 1 of
    # the small one; the big one's restart of c992 is its 993rd rule).
    name_small, name_big = "c0", f"c{big_rules - len(OPERATIONS)}"
    cases: dict[str, Callable[[str], tuple[Request, Facts]]] = {
        "scoped restart (resolved)": restart_case,
        "operation not granted": lambda _name: (request("POST", "/containers/create"), Facts()),
        "unscoped ping": lambda _name: (request("GET", "/_ping"), Facts()),
    }
    small = policy.compile_text(policy_text(small_rules), "small.yaml")
    big = policy.compile_text(policy_text(big_rules), "big.yaml")
    print(f"{'request':28} {small_rules:>8} rule {big_rules:>8} rules   ratio")
    worst = 0.0
    for label, make in cases.items():
        small_req, small_facts = make(name_small)
        big_req, big_facts = make(name_big)
        small_us = per_decision(small, small_req, small_facts, args.rounds)
        big_us = per_decision(big, big_req, big_facts, args.rounds)
        ratio = big_us / small_us
        worst = max(worst, ratio)
        print(f"{label:28} {small_us:9.2f} us {big_us:10.2f} us   {ratio:5.2f}x")
    print(f"worst ratio {worst:.2f}x ({'within' if worst <= 2 else 'OVER'} the 2x budget)")


if __name__ == "__main__":
    main()
