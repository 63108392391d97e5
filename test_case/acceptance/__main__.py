"""`python -m test_case.acceptance`: see `test_case.acceptance.cli`."""

from test_case.acceptance.cli import main

raise SystemExit(main())
