"""parse_target and the target bypass classes of docker-api-facts §5, and with_param.

Every rejection must be a BadTarget (400, connection closed) with a message that
says what is wrong; every acceptance must classify as the operation the daemon
runs for the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockgate.errors import BadTarget, HTTPError
from dockgate.routes import Target, classify, parse_target

ID = "3fa1c0ffee" + "0" * 54


def operation(method: str, raw: str) -> str | None:
    match = classify(method, parse_target(raw))
    return None if match is None else match.operation


def rejection(raw: str, method: str = "GET") -> str:
    """Why the target is refused, whether parse_target or classify refuses it."""
    with pytest.raises(BadTarget) as caught:
        classify(method, parse_target(raw))
    return caught.value.message


# --- Accepted targets ----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("/containers/json", Target("/containers/json", "/containers/json", None,
                                "/containers/json", "")),
    ("/v1.41/containers/gw/restart?t=5",
     Target("/v1.41/containers/gw/restart?t=5", "/v1.41/containers/gw/restart", "1.41",
            "/containers/gw/restart", "t=5")),
    ("/v1.41/%63ontainers/create", Target("/v1.41/%63ontainers/create",
                                          "/v1.41/containers/create", "1.41",
                                          "/containers/create", "")),
    ("/%761.41/_ping", Target("/%761.41/_ping", "/v1.41/_ping", "1.41", "/_ping", "")),
    ("/v0.0/_ping", Target("/v0.0/_ping", "/v0.0/_ping", "0.0", "/_ping", "")),
    ("/v1.41/", Target("/v1.41/", "/v1.41/", "1.41", "/", "")),
    ("/", Target("/", "/", None, "/", "")),
    ("/images/json?", Target("/images/json?", "/images/json", None, "/images/json", "")),
    ("/images/json?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D&all=1",
     Target("/images/json?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D&all=1",
            "/images/json", None, "/images/json",
            "filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D&all=1")),
    # "?" and "/" are ordinary data in a query (RFC 3986 §3.4).
    ("/containers/gw/stop?x=/start?y", Target("/containers/gw/stop?x=/start?y",
                                              "/containers/gw/stop", None,
                                              "/containers/gw/stop", "x=/start?y")),
    # "+" is not a space in a path (only in a query): Go and Python agree.
    ("/images/a+b/json", Target("/images/a+b/json", "/images/a+b/json", None,
                                "/images/a+b/json", "")),
    # A segment of dots that is not exactly "." or ".." is a name, not a dot segment.
    ("/volumes/a..b", Target("/volumes/a..b", "/volumes/a..b", None, "/volumes/a..b", "")),
    ("/volumes/...", Target("/volumes/...", "/volumes/...", None, "/volumes/...", "")),
])
def test_canonical_targets_parse_into_their_parts(raw: str, expected: Target) -> None:
    """The shell and policies read version, api_path and query from here: each must be exact."""
    assert parse_target(raw) == expected


def test_query_params_are_parsed_from_the_raw_query() -> None:
    """Policies read ?t= and ?signal= from the query; blank values must not vanish."""
    target = parse_target("/containers/gw/restart?t=5&signal=SIGTERM&x")
    assert target.query_params() == {"t": ["5"], "signal": ["SIGTERM"], "x": [""]}


def test_bad_target_answers_400_and_closes_with_a_docker_style_body() -> None:
    """The docker CLI prints the message line; the connection must not carry on after it."""
    with pytest.raises(BadTarget) as caught:
        parse_target("/a/../b")
    assert isinstance(caught.value, HTTPError)
    assert caught.value.status == 400
    assert caught.value.close_connection is True
    assert caught.value.body().startswith(b'{"message": "request target')


# --- Rejected targets: forms ---------------------------------------------------------

@pytest.mark.parametrize(("raw", "says"), [
    ("", "empty request target"),
    ("*", "asterisk-form"),
    ("http://docker:2375/containers/json?all=1", "send the origin form '/containers/json?all=1'"),
    ("http://docker:2375", "send the origin form '/'"),
    # Found by fuzz/fuzz_target.py: urlsplit raised ValueError ("Invalid IPv6 URL").
    ("http://[docker/containers/json", "send the origin form, a path starting with /"),
    ("docker:2375", "authority-form"),
    ("containers/json", "not origin-form"),
])
def test_non_origin_form_targets_are_rejected_with_the_canonical_form(raw: str, says: str) -> None:
    """An absolute URI names a host the proxy does not check; only a path is meaningful here."""
    assert says in rejection(raw)


@pytest.mark.parametrize(("raw", "says"), [
    ("/containers/json x", "U+0020"),
    ("/containers/json\t", "U+0009"),
    ("/containers/json\x00", "U+0000"),
    ("/containers/json\x7f", "U+007F"),
    ("/images/caf\u00e9/json", "non-ASCII"),
    ("/images/x/json?name=caf\u00e9", "non-ASCII"),
    ("/containers/gw\\..\\x/json", "'\\\\' must be percent-encoded"),
    ("/containers/json#frag", "fragment"),
    ("/containers/json?all=1#", "fragment"),
    ("/images/{x}/json", "'{' must be percent-encoded"),
    ("/images/x/json?filters={}", "'{' must be percent-encoded in the query"),
    ("/images/x/json?a=1;b=2", "';' in the query"),
])
def test_characters_components_disagree_about_are_rejected(raw: str, says: str) -> None:
    """Spaces, controls, non-ASCII and backslashes mean different things to Go, Python, proxies."""
    assert says in rejection(raw)


@pytest.mark.parametrize("raw", [
    "/containers/json%", "/containers/json%4", "/containers/%zzjson", "/x?a=%g0", "/x?a=%",
])
def test_invalid_percent_escapes_are_rejected(raw: str) -> None:
    """Go answers 400 to a bad escape in the path and drops it in the query; never guess."""
    assert "invalid percent-escape" in rejection(raw)


# --- Bypass classes (docker-api-facts §5) --------------------------------------------

@pytest.mark.parametrize(("method", "raw", "expected"), [
    ("POST", "/v1.41/%63ontainers/create", "container.create"),
    ("POST", "/%63ontainers/create", "container.create"),
    ("GET", "/containers/gw/%61rchive", "container.archive.read"),
    ("PUT", "/v1.41/containers/gw/%61%72%63%68%69%76%65", "container.archive.write"),
    ("POST", "/containers/gw/%72estart", "container.restart"),
    ("GET", "/v1.41/%65%78%65%63/e1/json", "exec.inspect"),
    ("POST", "/containers/gw/exe%63", "exec.create"),
])
def test_encoded_paths_classify_as_the_decoded_route(method: str, raw: str, expected: str) -> None:
    """The daemon decodes once before routing; matching the encoded text would miss the route."""
    assert operation(method, raw) == expected


@pytest.mark.parametrize("raw", [
    "/containers/x/../gw/restart",
    "/containers/./json",
    "/containers/json/.",
    "/containers/gw/..",
    "/v1.41/../containers/json",
    "/containers/x/%2e%2e/gw/restart",
    "/containers/x/%2E%2E/gw/restart",
    "/containers/%2e/json",
    "/containers/x/.%2e/gw/restart",
])
def test_dot_segments_are_rejected_before_and_after_decoding(raw: str) -> None:
    """The daemon only 301s these; a proxy forwarding them lets a following client walk paths."""
    assert "dot segment" in rejection(raw)


def test_dot_segment_rejection_names_the_cleaned_path() -> None:
    """A client author needs to see which path the daemon would have redirected to."""
    assert "canonical form: /containers/gw/restart" in rejection("/containers/x/../gw/restart")
    assert "canonical form: /containers/json" in rejection("/containers/./json")
    assert rejection("/containers/gw/../").endswith("canonical form: /containers/")
    assert rejection("/containers/gw/..").endswith("canonical form: /containers")


@pytest.mark.parametrize("raw", [
    "//containers/json", "/containers//json", "/v1.41//containers/json",
    "/containers/gw//restart", "/containers/gw/restart//",
])
def test_empty_segments_are_rejected(raw: str) -> None:
    """The daemon cleans "//" with a 301, so the route the proxy matched is not the one run."""
    assert "empty segment" in rejection(raw)


@pytest.mark.parametrize("raw", [
    "/containers/x%2F..%2Fgw/restart",
    "/containers/x%2f..%2fgw/restart",
    "/containers/web%2Fdb/json",
    "/images/library%2Fbusybox/json",
    "/v1.41%2Fcontainers/json",
])
def test_encoded_slashes_are_rejected(raw: str) -> None:
    """%2F decodes to a real "/" for routing: a different route or a dot segment in disguise."""
    assert "encodes '/'" in rejection(raw)


@pytest.mark.parametrize(("raw", "says"), [
    ("/containers/gw%3F/json", "'?' in the container parameter"),
    ("/containers/gw%23/json", "'#' in the container parameter"),
    ("/containers/gw%00/json", "U+0000"),
    ("/containers/gw%0a/json", "U+000A"),
    ("/networks/gw%0a", "U+000A"),
    ("/networks/a%C2%85b", "U+0085"),
    ("/networks/a%FFb", "not UTF-8"),
    ("/containers/gw%20x/json", "U+0020 in the container parameter"),
    ("/containers/gw%5c..%5cx/json", "'\\\\' in the container parameter"),
    ("/images/caf%C3%A9/json", "'\u00e9' in the image parameter"),
    ("/volumes/a%20b", "U+0020 in the volume parameter"),
    ("/exec/a%20b/json", "U+0020 in the exec parameter"),
    ("/plugins/a%20b/json", "U+0020 in the plugin parameter"),
    ("/services/a%20b", "U+0020 in the service parameter"),
])
def test_encoded_delimiters_and_controls_are_rejected(raw: str, says: str) -> None:
    """Controls never pass; spaces, non-ASCII, ? # \\ only where a name may hold them."""
    assert says in rejection(raw)


@pytest.mark.parametrize(("method", "raw", "operation_", "name"), [
    ("GET", "/v1.41/networks/peer%20dg%2001", "network.inspect", "peer dg 01"),
    ("GET", "/networks/caf%C3%A9", "network.inspect", "caf\u00e9"),
    ("POST", "/networks/a%3Fb/connect", "network.connect", "a?b"),
    ("POST", "/networks/a%23b/disconnect", "network.disconnect", "a#b"),
    ("DELETE", "/networks/a%5Cb", "network.delete", "a\\b"),
    ("DELETE", "/networks/50%25%20off", "network.delete", "50% off"),
])
def test_network_names_may_hold_what_the_daemon_allows_in_them(
        method: str, raw: str, operation_: str, name: str) -> None:
    """docker network create 'peer dg 01' works on the daemon: inspect and rm must route."""
    match = classify(method, parse_target(raw))
    assert match is not None
    assert (match.operation, match.params["network"]) == (operation_, name)


def test_free_text_outside_any_parameter_is_no_route() -> None:
    """A space in a literal part matches no route (the daemon's 404), it is not a name."""
    assert classify("GET", parse_target("/x%20y")) is None
    assert classify("GET", parse_target("/networks%20x")) is None


@pytest.mark.parametrize(("raw", "says"), [
    ("/containers/x%252F..%252Fgw/restart", "double-encodes '/'"),
    ("/containers/x/%252e%252e/gw/restart", "dot segment"),
    ("/containers/gw%2500/json", "U+0000"),
    ("/containers/gw%253F/json", "'?'"),
    # A network name too: a second decoding must not turn "%3F" into a "?".
    ("/networks/a%253Fb", "twice-decoded path contains '?'"),
    ("/networks/a%2520b%20c", "twice-decoded path contains U+0020"),
])
def test_double_encoded_tricks_are_rejected(raw: str, says: str) -> None:
    """A component that decodes a second time must not see a different path either."""
    assert says in rejection(raw)


@pytest.mark.parametrize(("raw", "says"), [
    # Found by fuzz/fuzz_target.py's invariant: "." after the third decoding.
    ("/containers/%25252e%25252e/json", "repeatedly decoded path has a dot segment"),
    ("/v1.41/containers/x/%2525252e/gw/restart", "repeatedly decoded path has a dot segment"),
    ("/containers/x%2525252F..%2525252Fgw/restart", "encodes '/' in the path"),
])
def test_dot_segments_are_rejected_after_any_number_of_decodings(raw: str, says: str) -> None:
    """Whoever decodes a third or fourth time must not find a dot segment the daemon never saw."""
    assert says in rejection(raw)


def test_double_encoding_decodes_once_and_routes_nowhere() -> None:
    """%2563 is the literal "%63" to the daemon: no route, so no operation to allow."""
    target = parse_target("/v1.41/%2563ontainers/create")
    assert target.api_path == "/%63ontainers/create"
    assert classify("POST", target) is None
    assert classify("GET", parse_target("/containers/gw/%2561rchive")) is None


@pytest.mark.parametrize(("method", "raw", "expected"), [
    ("POST", "/containers/gw/stop?x=/start", "container.stop"),
    ("POST", "/containers/gw/kill?x=/containers/gw/restart", "container.kill"),
    ("GET", "/containers/json?x=/../containers/gw/archive", "container.list"),
    ("POST", "/containers/create?name=/restart", "container.create"),
])
def test_query_strings_never_change_the_route(method: str, raw: str, expected: str) -> None:
    """A policy matching the raw URI would read "/start" here; the daemon routes the path only."""
    assert operation(method, raw) == expected


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/containers/gw/restart", "container.restart"),
    ("GET", "/containers/gw/archive", "container.archive.read"),
    ("POST", "/containers/create", "container.create"),
    ("GET", "/images/library/busybox:latest/json", "image.inspect"),
])
@pytest.mark.parametrize("prefix", ["", "/v1.12", "/v1.41", "/v1.44", "/v2.0"])
def test_versioned_and_unversioned_paths_classify_alike(
    prefix: str, method: str, path: str, expected: str,
) -> None:
    """A rule applied only to /v1.x/... is bypassed by the unversioned form the daemon serves."""
    assert operation(method, prefix + path) == expected


@pytest.mark.parametrize(("raw", "says"), [
    ("/v1.44.0.0/containers/json", "canonical form: /v1.44/containers/json"),
    ("/v1.41.0/containers/json", "canonical form: /v1.41/containers/json"),
    ("/v01.41/containers/json", "canonical form: /v1.41/containers/json"),
    ("/v1.041/containers/json", "canonical form: /v1.41/containers/json"),
    ("/v./containers/json", "expected /v<major>.<minor>/"),
    ("/v1/containers/json", "expected /v<major>.<minor>/"),
    ("/v1./containers/json", "expected /v<major>.<minor>/"),
    ("/v.41/containers/json", "expected /v<major>.<minor>/"),
    ("/v1..41/containers/json", "expected /v<major>.<minor>/"),
    ("/v1.41.1/containers/json", "expected /v<major>.<minor>/"),
    ("/%76./containers/json", "expected /v<major>.<minor>/"),
])
def test_loose_versions_are_rejected_with_the_canonical_form(raw: str, says: str) -> None:
    """The router takes /v[0-9.]+/: one spelling per version keeps version rules unambiguous."""
    message = rejection(raw)
    assert "loose API version" in message
    assert says in message


def test_a_version_lookalike_without_a_path_is_an_ordinary_segment() -> None:
    """The daemon's versionMatcher needs "/v.../" then a path; "/v1.41" alone is just a path."""
    target = parse_target("/v1.41")
    assert (target.version, target.api_path) == (None, "/v1.41")
    assert classify("GET", target) is None


NASTY = st.sampled_from(["/", ".", "..", "%", "%2F", "%2f", "%2e", "%25", "%252F", "%00",
                         "\\", "#", "?", " ", "a", "v1.41", "containers", "json", "%63"])


@settings(max_examples=400, deadline=None, database=None)
@given(parts=st.lists(NASTY, max_size=12))
def test_parse_target_either_parses_canonically_or_raises_bad_target(parts: list[str]) -> None:
    """Invariant: no other exception, and an accepted path is clean once and twice decoded."""
    raw = "/" + "".join(parts)
    try:
        target = parse_target(raw)
    except BadTarget:
        return
    segments = target.path.split("/")[1:]
    assert "" not in segments[:-1]
    assert "." not in segments
    assert ".." not in segments
    assert target.path.count("/") == target.raw_path.count("/")


# --- with_param ----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "raw", "name", "value", "expected"), [
    ("POST", "/containers/gw/restart", "container", ID, f"/containers/{ID}/restart"),
    ("POST", "/v1.41/containers/gw/restart?t=5", "container", ID,
     f"/v1.41/containers/{ID}/restart?t=5"),
    # The version prefix is kept byte for byte, the literal parts become canonical.
    ("POST", "/%761.41/%63ontainers/gw/restart?t=5&signal=SIGKILL", "container", ID,
     f"/%761.41/containers/{ID}/restart?t=5&signal=SIGKILL"),
    ("GET", "/containers/gw/json?", "container", "other", "/containers/other/json?"),
    ("GET", "/images/busybox/json", "image", "library/busybox:1.36",
     "/images/library/busybox:1.36/json"),
    ("DELETE", "/containers/gw/checkpoints/cp1", "checkpoint", "cp2",
     "/containers/gw/checkpoints/cp2"),
    # "%" is encoded, so the daemon (decoding once) sees the literal value.
    ("GET", "/containers/gw/json", "container", "x%41", "/containers/x%2541/json"),
    ("POST", "/networks/n/connect", "network", "peer dg/caf\u00e9?#",
     "/networks/peer%20dg/caf%C3%A9%3F%23/connect"),
])
def test_with_param_rebuilds_the_target_with_one_parameter_replaced(
    method: str, raw: str, name: str, value: str, expected: str,
) -> None:
    """The shell forwards the resolved full ID: same route, same version, same query."""
    match = classify(method, parse_target(raw))
    assert match is not None
    assert match.with_param(name, value) == expected


@pytest.mark.parametrize(("method", "raw", "name", "value"), [
    ("DELETE", "/services/web", "service", "a/b"),           # one segment
    ("DELETE", "/containers/gw/checkpoints/cp1", "container", "a/b"),  # one segment here
    ("DELETE", "/containers/gw", "container", "x/checkpoints/cp"),  # checkpoint.delete's
    ("GET", "/containers/gw/json", "container", "../x"),     # dot segment
    ("GET", "/containers/gw/json", "container", "a//b"),     # empty segment
    ("GET", "/containers/gw/json", "container", ""),         # no object has no name
    ("GET", "/containers/gw/json", "container", "caf\u00e9"),  # non-ASCII
    ("GET", "/containers/gw/json", "container", "a b"),      # space
    ("GET", "/networks/gw", "network", "a\nb"),            # a control, even in a network
    ("GET", "/containers/gw/json", "image", "busybox"),      # not a parameter of the route
    ("GET", "/debug/pprof/heap", "profile", "cmdline"),      # another route owns that name
])
def test_with_param_refuses_values_that_change_the_route(
    method: str, raw: str, name: str, value: str,
) -> None:
    """A rebuilt target that routes elsewhere would act on an object nobody checked."""
    match = classify(method, parse_target(raw))
    assert match is not None
    with pytest.raises(ValueError, match=r"cannot be a|has no parameter"):
        match.with_param(name, value)
