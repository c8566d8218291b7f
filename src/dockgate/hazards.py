"""The operations that are root on the host or close to it, as data (pure).

``danger`` classifies grants with this table (lint, serve warnings, audit,
check); ``compat`` and ``policy_decider`` use it to say, in a denial hint, when
the setting they suggest would be host root.
"""

from __future__ import annotations

ROOT = "root on the host"

# The create constraints without which a create is root on the host: each one
# alone lets a container reach the host (bodies.CHECKS names them).
ROOT_CREATE_CHECKS = frozenset({"privileged", "host-mounts", "host-namespaces",
                                "capabilities", "devices", "security-options"})

# Operation -> what a client can do with it, in plain words.
DANGEROUS: dict[str, str] = {
    "container.create": "creates containers with any body: a bind mount of / or privileged "
                        f"mode is {ROOT}",
    "exec.create": "runs any command as any user, privileged when asked, inside the "
                   f"containers it covers: close to {ROOT}",
    "volume.create": "creates volumes with driver options (o=bind,device=/ puts any host "
                     f"path into a container): {ROOT}",
    "container.archive.write": "writes files into containers (their programs, their "
                               f"configuration): close to {ROOT}",
    "image.build": "runs arbitrary build steps on the daemon, with host networking when "
                   f"asked: close to {ROOT}",
    "plugin.pull": f"installs plugins, which run with host privileges: {ROOT}",
    "plugin.create": f"creates plugins, which run with host privileges: {ROOT}",
    "plugin.enable": f"enables plugins, which run with host privileges: {ROOT}",
    "plugin.upgrade": f"upgrades plugins, which run with host privileges: {ROOT}",
    "plugin.set": f"changes plugin mounts and devices: close to {ROOT}",
    "service.create": f"creates swarm services (containers with host mounts): {ROOT}",
    "service.update": f"changes swarm services (containers with host mounts): {ROOT}",
    "swarm.join": f"joins this node to a swarm whose managers then run containers here: {ROOT}",
    "grpc": f"speaks gRPC to the daemon past its HTTP router: {ROOT}",
}

# Operation -> the grant attributes that, when set, mean its request bodies are judged.
CONSTRAINTS: dict[str, tuple[str, ...]] = {
    "exec.create": ("exec_rules",),
    "volume.create": ("volume_deny",),
}

