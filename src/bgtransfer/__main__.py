"""``python -m bgtransfer``: the command line."""

from bgtransfer.cli import main

raise SystemExit(main())
