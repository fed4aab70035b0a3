"""`python -m axonsim`: the command line."""

import sys

from axonsim.cli import main

sys.exit(main())
