"""``make install BUNDLE=DIR``: install the suite into a venv from a bundle, with no index and no network.

1. Read ``bundle.json`` and check every file against it (size, then sha256): a missing or altered
   file stops the install before pip runs, with one line per file.
2. ``pip install --no-index --find-links DIR/wheels --require-hashes -r DIR/requirements-<tag>.txt``
   for the venv's Python: pip takes nothing but the bundle's wheels and checks each hash again.
3. The suite itself, editable and without its dependencies (all installed in 2), then ``pip check``.

pip runs with ``PIP_CONFIG_FILE=/dev/null`` and no ``PIP_*`` variable, so no pip.conf of the
machine can add an index or a folder of other wheels. Standard library only: this runs with the
bare venv's Python, before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from test_case.bundle.manifest import BundleError, read_manifest, verify_bundle


def bundle_pip_env() -> dict[str, str]:
    """This environment without pip's variables and with no pip.conf read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def python_tag(python: Path) -> str:
    """The wheelset tag of a Python interpreter: ``cp311``."""
    out = subprocess.run(
        [str(python), "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _pip(python: Path, args: Sequence[str]) -> None:
    cmd = [str(python), "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, env=bundle_pip_env(), check=False)
    if result.returncode != 0:
        raise BundleError(
            f"`pip {args[0]}` from the bundle failed (exit code {result.returncode}): see pip's lines above"
        )


def install_bundle(bundle: Path, python: Path, project: Path) -> None:
    """Check the bundle, then install the lock and the project at ``project`` with ``python``'s pip."""
    started = time.monotonic()
    bundle = bundle.resolve()
    manifest = read_manifest(bundle)
    problems = verify_bundle(bundle, manifest)
    if problems:
        raise BundleError(
            f"{len(problems)} file(s) of the bundle {bundle} do not match its {bundle / 'bundle.json'}:\n  "
            + "\n  ".join(problems)
            + "\ncopy the bundle again from the connected machine (check it there with "
            "`sha256sum -c SHA256SUMS`), or rebuild it with `make bundle`"
        )
    size = sum(f.bytes for f in manifest.files)
    print(f"bundle {bundle}: {len(manifest.files)} files, {size / 1e9:.2f} GB, every sha256 as its manifest says")
    tag = python_tag(python)
    if tag not in manifest.wheelsets:
        raise BundleError(
            f"{bundle} holds wheels for {', '.join(manifest.wheelsets)} ({manifest.platform}), not for this "
            f"Python ({tag}, {python}): make the venv with that Python (make install PYTHON=python3.X), or "
            "build the bundle on a connected machine with this Python"
        )
    wheels = str(bundle / "wheels")
    offline = ["--no-index", "--find-links", wheels]
    _pip(python, ["install", "-q", *offline, "--require-hashes", "-r", str(bundle / manifest.wheelsets[tag])])
    _pip(python, ["install", "-q", *offline, "--no-deps", "--no-build-isolation", "-e", str(project)])
    _pip(python, ["check"])
    print(f"installed from the bundle, with no index, in {time.monotonic() - started:.0f} s")


def main_install(bundle: Path, python: Path | None, project: Path) -> int:
    """CLI body of ``install``: 0, or 1 with the error on stderr."""
    try:
        install_bundle(bundle, python or Path(sys.executable), project)
    except BundleError as err:
        print(f"bundle: error: {err}", file=sys.stderr)
        return 1
    return 0
