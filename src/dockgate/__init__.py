"""dockgate: a least-privilege proxy for the Docker Engine API."""

__version__ = "0.1.0"
