"""The image-list watch: a rewritten list reloads the policy; a broken one keeps it.

Runs ``watch.watch`` on a real ``server.Proxy`` (not started: only its decider
and its SIGHUP reload are involved) with a short interval.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from dockgate import policy, settings, watch
from dockgate.policy_decider import PolicyDecider
from dockgate.shell.proxy import Proxy

POLICY = """\
    policies:
      gw:
        grants:
          - allow: [image.inspect]
            images_from: images.txt
    default: gw
    """


def admits(proxy: Proxy, image: str) -> bool:
    decider = proxy.decider
    assert isinstance(decider, PolicyDecider)
    grant = decider.policies["gw"].grants[0]
    assert grant.image_list is not None
    return grant.image_list.admits(image)


async def rewrite_and_wait(path: Path, text: str, proxy: Proxy, image: str,
                           expected: bool) -> bool:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)  # as the relay writes it: a new inode
    for _ in range(100):
        await asyncio.sleep(0.01)
        if admits(proxy, image) is expected:
            return True
    return False


def test_a_rewritten_list_is_reloaded_and_a_broken_one_keeps_the_last_good(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Approvals apply within the watch interval; a half-written list never empties it."""
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    images = tmp_path / "images.txt"
    images.write_text("mcp/a:1\n")
    path = str(tmp_path / "policy.yaml")
    proxy = Proxy(settings.load(None, {}), policy.load_file(path))

    async def scenario() -> list[bool]:
        task = asyncio.ensure_future(watch.watch(proxy, lambda: policy.load_file(path),
                                                 interval=0.02))
        try:
            return [await rewrite_and_wait(images, "mcp/a:1\nmcp/b:1\n", proxy, "mcp/b:1", True),
                    await rewrite_and_wait(images, "mcp/a:1\n", proxy, "mcp/b:1", False),
                    not await rewrite_and_wait(images, "Not An Image\n", proxy, "mcp/a:1",
                                               False),
                    not await rewrite_and_wait(images, "Not An Image\n", proxy, "mcp/a:1",
                                               False)]
        finally:
            task.cancel()

    assert asyncio.run(scenario()) == [True, True, True, True]
    # Tried once per version of the broken file, not once per poll.
    assert caplog.text.count("reload failed, keeping the current policy") == 2
    assert admits(proxy, "mcp/a:1")


def test_only_a_policy_with_image_lists_is_watched(tmp_path: Path) -> None:
    """Tecnativa-style deciders and policies without lists watch nothing."""
    assert watch.watched(policy.compile_text("policies: {p: {grants: [{allow: [system.ping]}]}}",
                                             "p.yaml")) == ()
    missing = str(tmp_path / "none.txt")
    assert watch.current(((missing, (1, 2, 3)),)) == ((missing, None),)
