"""`python -m test_case.bundle`: see `test_case.bundle.cli`."""

from test_case.bundle.cli import main

raise SystemExit(main())
