"""`python -m vaelab ...` (and `torchrun -m vaelab train ...`)."""

import sys

from vaelab.cli import main

sys.exit(main())
