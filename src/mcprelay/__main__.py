"""``python -m mcprelay`` is the ``dockgate-mcp-relay`` command."""

from mcprelay.cli import main

raise SystemExit(main())
