"""Entry point of `python -m preprocessing` (see `preprocessing.cli`)."""

from preprocessing.cli import main

raise SystemExit(main())
