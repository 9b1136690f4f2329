"""``python -m cxr_triage``."""

import sys

from cxr_triage.cli import main

sys.exit(main())
