"""``python -m aioconnector``: the command line (see ``aioconnector --help``)."""

from aioconnector._cli import main

raise SystemExit(main())
