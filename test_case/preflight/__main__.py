"""``python -m test_case.preflight``: see `test_case.preflight.cli`."""

import sys

from test_case.preflight.cli import main

sys.exit(main())
