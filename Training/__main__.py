"""``python -m Training ...`` (and ``torchrun -m Training ...``): the training command line."""

import sys

from .cli import main

sys.exit(main())
