"""``python -m dockgate`` is the ``dockgate`` command."""

from dockgate.cli import main

raise SystemExit(main())
