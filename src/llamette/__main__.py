"""`python -m llamette` is the `llamette` command."""

import sys

from llamette.cli import main

sys.exit(main())
