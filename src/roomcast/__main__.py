"""``python -m roomcast``: the ``roomcast`` command."""

from roomcast.server.cli import main

raise SystemExit(main())
