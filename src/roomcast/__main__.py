"""``python -m roomcast``: the ``roomcast`` command."""

from roomcast.cli import main

raise SystemExit(main())
