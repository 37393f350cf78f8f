"""The length sweep: `python experiments/run.py --max-len 4096` (the same as the `ssmlora-sweep` command).

See `python experiments/run.py --help` and docs/sweep.md.
"""

import sys

if __name__ == "__main__":
    # Imported here, not above: every spawned cell process re-imports this script as its main module, and it
    # should start its own work at once rather than load the sweep's command line first.
    from ssmlora.sweep.cli import main

    sys.exit(main())
