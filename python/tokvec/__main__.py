"""`python -m tokvec` runs the command line."""

import sys

from tokvec.cli import main

sys.exit(main())
