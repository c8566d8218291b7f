# dockgate container image, built offline by scripts/build-image:
#   - BASE is a local image with python3 and python3-venv (scripts/build-image makes
#     dockgate-test/python-base with debootstrap); nothing is pulled;
#   - the build context holds dockgate's source and a wheelhouse of its dependencies
#     for the BASE image's own Python (scripts/build-image asks it for its version and
#     platform and downloads matching binary wheels), so any host Python works;
#   - the builder stage builds dockgate's wheel and the virtual environment with that
#     Python, --no-index (no network needed); the final stage copies the venv.
# Runs as uid 10001. To reach /var/run/docker.sock (root:docker, mode 660) the
# container needs the socket's group: `group_add: ["<gid of the socket>"]` in compose,
# `--group-add "$(stat -c %g /var/run/docker.sock)"` with docker run (docs/mcp-gateway.md).
ARG BASE=dockgate-test/python-base
FROM ${BASE} AS builder
# scripts/build-image removes this stage's leftover image by this label.
LABEL dockgate.stage=builder

COPY wheelhouse/ /tmp/wheelhouse/
COPY source/ /tmp/source/
RUN python3 -m venv /opt/dockgate \
    && /opt/dockgate/bin/pip wheel --quiet --no-index --no-cache-dir \
        --disable-pip-version-check --find-links /tmp/wheelhouse --wheel-dir /tmp/wheelhouse \
        --no-deps /tmp/source \
    && /opt/dockgate/bin/pip install --quiet --no-index --no-cache-dir \
        --disable-pip-version-check --find-links /tmp/wheelhouse dockgate

FROM ${BASE}
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dockgate" \
      org.opencontainers.image.description="A least-privilege proxy for the Docker Engine API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder /opt/dockgate/ /opt/dockgate/
COPY LICENSE /opt/dockgate/LICENSE
# /run/dockgate-gateway: where deploy/compose.yaml mounts the MCP gateway's socket
# volume. A new named volume takes this directory's owner, so dockgate (uid 10001,
# read-only root filesystem) can create its listener socket in it.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dockgate \
    && install -d -o 10001 -g 10001 -m 0755 /run/dockgate-gateway
COPY healthcheck.py /opt/dockgate/healthcheck.py

# The admin listener on loopback: /readyz for the HEALTHCHECK, outside every client
# policy (a per-client policy without a default would fail a probe through the API).
# Loopback inside the container reaches no other host; set it to 0.0.0.0:9102 for an
# orchestrator's probes or a Prometheus scrape, or to "" to probe through the API.
ENV PATH=/opt/dockgate/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DOCKGATE_ADMIN_LISTEN=127.0.0.1:9102
USER 10001:10001
EXPOSE 2375
# GET /readyz on the admin listener: healthy when dockgate runs and the daemon answers
# /_ping. Engine 20.10 has no --start-interval, so the first check comes one interval
# after the start: 3 s lets compose start `service_healthy` dependents within seconds
# (a check is one short Python process).
HEALTHCHECK --interval=3s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/dockgate/bin/python", "/opt/dockgate/healthcheck.py"]
ENTRYPOINT ["dockgate"]
CMD ["serve"]
