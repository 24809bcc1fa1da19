"""`python -m esm_tasks`: the esm-tasks command."""

import sys

from ._cli import main

sys.exit(main())
