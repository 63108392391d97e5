"""`python -m tests.check_yamls FILE...`: each llm-foundry yaml parses and its interpolations resolve.

The pre-commit hook over ``yamls/`` (``.pre-commit-config.yaml``). OmegaConf is what llm-foundry
loads them with, so a file that passes here reaches llm-foundry's own validation, which
``tests/test_yamls.py`` runs. Prints ``FILE: problem`` for each bad file and exits 1.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError


def problems(paths: list[str]) -> list[str]:
    """One line per file that does not parse or resolve."""
    out = []
    for path in paths:
        try:
            OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except (OSError, YAMLError, OmegaConfBaseException) as err:
            out.append(f"{path}: {' '.join(str(err).split())}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Check the files named on the command line."""
    found = problems(sys.argv[1:] if argv is None else argv)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
