"""``python -m sqsd_fast``: the ``sqsd-fast`` command line (same commands, same exit codes)."""
from sqsd_fast.app.cli import main

raise SystemExit(main())
