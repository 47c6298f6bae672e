"""``python -m linscan ...`` runs the ``linscan`` console script (same commands, same exit codes)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
