"""The decision point in the shell: facts fetched on demand, targets pinned, responses filtered.

Deciders here are small test doubles (real Decider implementations, no mocks)
that ask for what a policy would ask for; the fake daemon records what the
proxy fetched and forwarded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from dockgate.decision import (
    Allow,
    Client,
    Decision,
    Deny,
    DenyAll,
    ErrorAnswer,
    Facts,
    NeedFacts,
    Request,
)
from fakedaemon import (
    FakeConnection,
    FakeDaemon,
    Received,
    answer_chunks,
    answer_json,
    connect,
    is_closed,
    read_replies,
    run_proxy,
)

FULL_ID = "f" * 64


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    """A fake daemon that knows one container, 'gw', labelled role=gateway."""
    path = Path(tempfile.mkdtemp(prefix="dg-", dir="/tmp"))
    with FakeDaemon(path / "fake.sock") as daemon:
        daemon.on("GET", "/containers/gw/json", answer_json(
            {"Id": FULL_ID, "Name": "/gw", "Config": {"Labels": {"role": "gateway"},
                                                       "Image": "busybox"}}))
        daemon.on("GET", "/containers/nope/json", answer_json({"message": "No such"}, 404))
        yield daemon
    shutil.rmtree(path, ignore_errors=True)


class RestartLabelled:
    """Allows restarting containers labelled role=gateway, pinned to the resolved ID."""

    name = "restart-labelled"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        match = request.match
        if match is None or match.operation != "container.restart":
            return Deny("not a restart", rule="test")
        ref = match.params["container"]
        if ref not in facts.containers:
            return NeedFacts(containers=(ref,))
        container = facts.containers[ref]
        if container is None:
            return Deny(f"no container {ref}", status=404, rule="test")
        if container.labels.get("role") != "gateway" or container.name != "gw":
            return Deny("not a gateway", rule="test")
        return Allow(rule="gateway", target=match.with_param("container", container.id))


class NoPrivileged:
    """Reads container create bodies and refuses privileged ones."""

    name = "no-privileged"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        if facts.body is None:
            return NeedFacts(body=True)
        body = json.loads(facts.body or b"{}")
        if body.get("HostConfig", {}).get("Privileged"):
            return Deny("privileged containers are not allowed", rule="no-privileged")
        return Allow(rule="inspected")


@dataclass(frozen=True)
class KeepLabelled:
    """A response filter keeping items whose labels say team=a."""

    mode: Literal["json-list", "json-lines"]
    list_key: str | None = None

    def keep(self, item: Mapping[str, Any]) -> bool:
        labels = item.get("Labels") or item.get("Actor", {}).get("Attributes", {})
        return bool(labels.get("team") == "a")


class Filtering:
    """Allows everything with a response filter of the given mode."""

    name = "filtering"

    def __init__(self, mode: Literal["json-list", "json-lines"], list_key: str | None = None,
                 error_answer: ErrorAnswer | None = None) -> None:
        self.mode = mode
        self.list_key = list_key
        self.error_answer = error_answer

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        return Allow(rule="filtered", response_filter=KeepLabelled(self.mode, self.list_key),
                     error_answer=self.error_answer)


class Anonymized:
    """An error answer that keeps the status and says nothing about the daemon's message."""

    def rewrite(self, status: int, body: bytes) -> bytes:
        return b'{"message":"rewritten %d from %d bytes"}\n' % (status, len(body))


class ExecInLabelled:
    """Allows exec.start when the exec runs in 'gw'; pinned to the exec's full ID."""

    name = "exec-in-labelled"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        assert request.match is not None
        ref = request.match.params["exec"]
        if ref not in facts.execs:
            return NeedFacts(execs=(ref,))
        found = facts.execs[ref]
        if found is None:
            return Deny(f"no exec {ref}", status=404, rule="test")
        if found.container not in facts.containers:
            return NeedFacts(containers=(found.container,))
        container = facts.containers[found.container]
        if container is None or container.name != "gw":
            return Deny("not in gw", rule="test")
        return Allow(rule="exec", target=request.match.with_param("exec", found.id))


class LabelVolumeCreate:
    """Refuses to create a volume that exists; adds a label to the body it forwards."""

    name = "label-volume-create"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        if facts.body is None:
            return NeedFacts(body=True)
        name = json.loads(facts.body)["Name"]
        if name not in facts.volumes:
            return NeedFacts(volumes=(name,))
        existing = facts.volumes[name]
        if existing is not None:
            return Deny(f"{name} exists ({existing.driver}, {dict(existing.labels)})",
                        status=409, rule="test")
        return Allow(rule="create", body=json.dumps({"Name": name, "Labels": {"o": "me"}})
                     .encode(), error_answer=Anonymized())


def send(port: int, data: bytes, method: str, target: str) -> Any:
    with connect(port) as sock:
        sock.sendall(data)
        reply, = read_replies(sock, [(method, target)])
    return reply


def test_container_reference_is_resolved_and_the_resolved_id_forwarded(fake: FakeDaemon) -> None:
    """The object checked is the object acted on: the daemon gets the full ID, not 'gw'."""
    with run_proxy(f"unix://{fake.path}", RestartLabelled()) as proxy:
        reply = send(proxy.port, b"POST /v1.41/containers/gw/restart?t=5 HTTP/1.1\r\n"
                     b"Host: d\r\nContent-Length: 0\r\n\r\n", "POST", "/")
    assert reply.status == 200
    assert [(r.method, r.target) for r in fake.requests] == [
        ("GET", "/containers/gw/json"), ("POST", f"/v1.41/containers/{FULL_ID}/restart?t=5")]


def test_unknown_container_is_denied_without_forwarding(fake: FakeDaemon) -> None:
    """A reference the daemon does not know (404 on inspect) reaches the decider as None."""
    with run_proxy(f"unix://{fake.path}", RestartLabelled()) as proxy:
        reply = send(proxy.port, b"POST /containers/nope/restart HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.status == 404
    assert reply.json() == {"message": "no container nope"}
    assert [r.target for r in fake.requests] == ["/containers/nope/json"]


def test_ambiguous_id_prefix_reaches_the_decider_as_unknown(fake: FakeDaemon) -> None:
    """A prefix naming two containers resolves to None, like a missing one, not to a 502."""
    fake.on("GET", "/containers/8/json",
            answer_json({"message": "Multiple IDs found with provided prefix: 8"}, 500))
    with run_proxy(f"unix://{fake.path}", RestartLabelled()) as proxy:
        reply = send(proxy.port, b"POST /containers/8/restart HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.status == 404
    assert [r.target for r in fake.requests] == ["/containers/8/json"]


def test_daemon_error_while_fetching_facts_is_a_502(fake: FakeDaemon) -> None:
    """When the daemon cannot answer the inspect, the request is refused, never guessed."""
    fake.on("GET", "/containers/gw/json", answer_json({"message": "boom"}, 500))
    with run_proxy(f"unix://{fake.path}", RestartLabelled()) as proxy:
        reply = send(proxy.port, b"POST /containers/gw/restart HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.status == 502
    assert len(fake.requests) == 1


def test_inspected_body_is_forwarded_exactly_with_content_length(fake: FakeDaemon) -> None:
    """A body read for the decision is re-sent byte for byte, even when it came chunked."""
    body = b'{"Image":"busybox","HostConfig":{"Privileged":false}}'
    with run_proxy(f"unix://{fake.path}", NoPrivileged()) as proxy:
        reply = send(proxy.port, b"POST /containers/create HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % 10 + body[:10] + b"\r\n"
                     + b"%x\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n",
                     "POST", "/")
    assert reply.status == 200
    forwarded = fake.requests[0]
    assert forwarded.body == body
    assert forwarded.header("Content-Length") == str(len(body))
    assert forwarded.header("Transfer-Encoding") is None


def test_denied_body_never_reaches_the_daemon(fake: FakeDaemon) -> None:
    """A body the policy refuses is read by the proxy only."""
    body = b'{"Image":"busybox","HostConfig":{"Privileged":true}}'
    with run_proxy(f"unix://{fake.path}", NoPrivileged()) as proxy:
        reply = send(proxy.port, b"POST /containers/create HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body, "POST", "/")
    assert reply.status == 403
    assert fake.received == b""


def test_body_over_the_inspection_limit_is_413_and_never_forwarded(fake: FakeDaemon) -> None:
    """An oversized body cannot be inspected, so it is refused, never passed through."""
    body = b'{"Image":"' + b"x" * 200 + b'"}'
    with run_proxy(f"unix://{fake.path}", NoPrivileged(),
                   DOCKGATE_MAX_INSPECT_BYTES="100") as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /containers/create HTTP/1.1\r\nHost: d\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        reply, = read_replies(sock, [("POST", "/containers/create")])
        assert reply.status == 413
        assert is_closed(sock)
    assert fake.received == b""


def test_json_list_response_keeps_only_allowed_items(fake: FakeDaemon) -> None:
    """A filtered list is re-sent whole with a correct Content-Length."""
    fake.on("GET", "/containers/json", answer_json([
        {"Id": "1", "Labels": {"team": "a"}}, {"Id": "2", "Labels": {"team": "b"}},
        {"Id": "3", "Labels": {"team": "a"}}]))
    with run_proxy(f"unix://{fake.path}", Filtering("json-list")) as proxy:
        reply = send(proxy.port, b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n",
                     "GET", "/containers/json")
    assert [item["Id"] for item in reply.json()] == ["1", "3"]
    assert int(reply.headers["content-length"]) == len(reply.body)


def test_json_lines_stream_is_filtered_item_by_item(fake: FakeDaemon) -> None:
    """Events are filtered as they arrive, even when an event is split across chunks."""
    events = [{"Type": "container", "Actor": {"Attributes": {"team": team}}, "n": n}
              for n, team in enumerate("abab")]
    stream = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    fake.on("GET", "/events", answer_chunks([stream[:30], stream[30:95], stream[95:]],
                                            delay=0.05))
    with run_proxy(f"unix://{fake.path}", Filtering("json-lines")) as proxy:
        reply = send(proxy.port, b"GET /events HTTP/1.1\r\nHost: d\r\n\r\n", "GET", "/events")
    assert [json.loads(line)["n"] for line in reply.body.splitlines()] == [0, 2]


def test_list_inside_an_object_is_filtered_and_the_rest_of_the_object_kept(
        fake: FakeDaemon) -> None:
    """GET /volumes answers an object: only its list is filtered, Warnings stay as sent."""
    fake.on("GET", "/volumes", answer_json({"Volumes": [
        {"Name": "1", "Labels": {"team": "a"}}, {"Name": "2", "Labels": {"team": "b"}}],
        "Warnings": ["w"]}))
    with run_proxy(f"unix://{fake.path}", Filtering("json-list", "Volumes")) as proxy:
        reply = send(proxy.port, b"GET /volumes HTTP/1.1\r\nHost: d\r\n\r\n", "GET", "/volumes")
    assert reply.json() == {"Volumes": [{"Name": "1", "Labels": {"team": "a"}}],
                            "Warnings": ["w"]}
    assert int(reply.headers["content-length"]) == len(reply.body)


def test_daemon_error_on_a_filtered_list_goes_through_the_error_answer(
        fake: FakeDaemon) -> None:
    """An error is not a list to filter: the decider's error answer says what the client reads."""
    fake.on("GET", "/containers/json", answer_json({"message": "invalid filter"}, 400))
    with run_proxy(f"unix://{fake.path}", Filtering("json-list", None, Anonymized())) as proxy:
        reply = send(proxy.port, b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n",
                     "GET", "/containers/json")
    assert reply.status == 400
    assert reply.body == b'{"message":"rewritten 400 from 30 bytes"}\n'
    assert int(reply.headers["content-length"]) == len(reply.body)


def test_daemon_error_on_a_filtered_list_without_error_answer_stays_a_502(
        fake: FakeDaemon) -> None:
    """Without a decider's word on it, an unexpected answer is never shown unfiltered."""
    fake.on("GET", "/containers/json", answer_json({"message": "invalid filter"}, 400))
    with run_proxy(f"unix://{fake.path}", Filtering("json-list")) as proxy:
        reply = send(proxy.port, b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n",
                     "GET", "/containers/json")
    assert reply.status == 502


def test_exec_is_resolved_to_its_container_and_pinned_to_its_full_id(fake: FakeDaemon) -> None:
    """exec.start is judged by the container the exec runs in; the daemon gets the full exec ID."""
    exec_id = "e" * 64
    fake.on("GET", "/exec/e1/json", answer_json({"ID": exec_id, "ContainerID": "gw"}))
    fake.on("POST", f"/exec/{exec_id}/resize?h=1&w=2", answer_json({}))
    with run_proxy(f"unix://{fake.path}", ExecInLabelled()) as proxy:
        reply = send(proxy.port, b"POST /exec/e1/resize?h=1&w=2 HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.status == 200
    assert [r.target for r in fake.requests] == [
        "/exec/e1/json", "/containers/gw/json", f"/exec/{exec_id}/resize?h=1&w=2"]


def test_unknown_exec_reaches_the_decider_as_none(fake: FakeDaemon) -> None:
    """A 404 on the exec inspect is a fact (no such exec), not a failure."""
    fake.on("GET", "/exec/nope/json", answer_json({"message": "No such exec"}, 404))
    with run_proxy(f"unix://{fake.path}", ExecInLabelled()) as proxy:
        reply = send(proxy.port, b"POST /exec/nope/resize HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.json() == {"message": "no exec nope"}
    assert [r.target for r in fake.requests] == ["/exec/nope/json"]


def test_volume_facts_are_fetched_for_the_decider(fake: FakeDaemon) -> None:
    """A volume the daemon knows reaches the decider with its driver and labels."""
    fake.on("GET", "/volumes/v1", answer_json({"Name": "v1", "Driver": "local",
                                               "Labels": {"o": "them"}}))
    body = b'{"Name": "v1"}'
    with run_proxy(f"unix://{fake.path}", LabelVolumeCreate()) as proxy:
        reply = send(proxy.port, b"POST /volumes/create HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body, "POST", "/")
    assert reply.status == 409
    assert reply.json() == {"message": "v1 exists (local, {'o': 'them'})"}
    assert [r.target for r in fake.requests] == ["/volumes/v1"]


def test_body_chosen_by_the_decider_is_forwarded_with_its_own_length(fake: FakeDaemon) -> None:
    """A rewritten body (the owner label added) replaces the client's, framed by its length."""
    fake.on("GET", "/volumes/v2", answer_json({"message": "no such volume"}, 404))
    fake.on("POST", "/volumes/create", answer_json({"Name": "v2"}, 201))
    body = b'{"Name": "v2", "Labels": {}}'
    with run_proxy(f"unix://{fake.path}", LabelVolumeCreate()) as proxy:
        reply = send(proxy.port, b"POST /volumes/create HTTP/1.1\r\nHost: d\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body
                     + b"\r\n0\r\n\r\n", "POST", "/")
    assert reply.status == 201
    forwarded = fake.requests[-1]
    assert json.loads(forwarded.body) == {"Name": "v2", "Labels": {"o": "me"}}
    assert forwarded.header("Content-Length") == str(len(forwarded.body))
    assert forwarded.header("Transfer-Encoding") is None


def test_a_body_replaced_without_reading_the_clients_is_an_internal_error(
        fake: FakeDaemon) -> None:
    """The client's unread body would be taken for the next request: never forward that."""

    class Careless:
        name = "careless"

        def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
            return Allow(rule="careless", body=b"{}")

    with run_proxy(f"unix://{fake.path}", Careless()) as proxy:
        reply = send(proxy.port, b"POST /volumes/create HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: 2\r\n\r\n{}", "POST", "/")
    assert reply.status == 500
    assert fake.received == b""


def test_daemon_error_is_rewritten_by_the_error_answer(fake: FakeDaemon) -> None:
    """An error that could name another client's object reaches the client rewritten."""
    fake.on("GET", "/volumes/v3", answer_json({"message": "no such volume"}, 404))
    fake.on("POST", "/volumes/create", answer_json({"message": "in use by " + "a" * 64}, 409))
    body = b'{"Name": "v3"}'
    with run_proxy(f"unix://{fake.path}", LabelVolumeCreate()) as proxy:
        reply = send(proxy.port, b"POST /volumes/create HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body, "POST", "/")
    assert reply.status == 409
    assert reply.body == b'{"message":"rewritten 409 from 90 bytes"}\n'


def test_decider_that_never_settles_is_denied(fake: FakeDaemon) -> None:
    """The facts loop is bounded: a decider asking forever gets a denial, not a hang."""

    class Insatiable:
        name = "insatiable"
        asked = 0

        def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
            self.asked += 1
            return NeedFacts(containers=(f"c{self.asked}",))

    def unknown(request: Received, conn: FakeConnection) -> bool:
        conn.json({"message": "no such container"}, 404)
        return True

    fake.default = unknown
    with run_proxy(f"unix://{fake.path}", Insatiable()) as proxy:
        reply = send(proxy.port, b"GET /containers/json HTTP/1.1\r\nHost: d\r\n\r\n",
                     "GET", "/containers/json")
    assert reply.status == 403
    assert all(r.target.endswith("/json") and r.target != "/containers/json"
               for r in fake.requests)


class Broken:
    """A decider with a bug: it raises."""

    name = "broken"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        raise KeyError("bug")


class Injecting:
    """A decider whose rewritten target would inject a header line."""

    name = "injecting"

    def decide(self, client: Client, request: Request, facts: Facts) -> Decision:
        return Allow(rule="bad", target="/containers/x/restart HTTP/1.1\r\nX-Evil: 1\r\n")


@pytest.mark.parametrize("decider", [Broken(), Injecting()], ids=["raises", "bad-target"])
def test_a_faulty_decider_denies_with_500_and_forwards_nothing(
        fake: FakeDaemon, decider: Broken | Injecting) -> None:
    """Deny by default holds even when a decider has a bug."""
    with run_proxy(f"unix://{fake.path}", decider) as proxy:
        reply = send(proxy.port, b"POST /containers/gw/restart HTTP/1.1\r\nHost: d\r\n\r\n",
                     "POST", "/")
    assert reply.status == 500
    assert reply.json() == {"message": "dockgate: internal error deciding this request"}
    assert fake.received == b""


def test_a_client_still_sending_a_denied_body_reads_the_denial(fake: FakeDaemon) -> None:
    """A denied `docker build` streams on after the 403: it must read why, not get a reset."""
    body = b"x" * (8 * 1024 * 1024)
    with run_proxy(f"unix://{fake.path}", DenyAll()) as proxy, connect(proxy.port) as sock:
        sock.sendall(b"POST /build HTTP/1.1\r\nHost: d\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:65536])
        time.sleep(0.3)  # the proxy has answered and closed its side by now
        sock.sendall(body[65536:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        client_port = sock.getsockname()[1]
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in answer
    assert answer.endswith(b"no policy grants anything to tcp:127.0.0.1:%d\"}\n" % client_port)
    assert fake.received == b""
