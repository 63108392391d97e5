"""``python -m test_case.history``: see `test_case.history.cli`."""

import sys

from test_case.history.cli import main

sys.exit(main())
