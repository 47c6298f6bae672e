"""`python -m linscan.bench.gpu`: see :mod:`linscan.bench.gpu.cli`."""

import sys

from .cli import main

sys.exit(main())
