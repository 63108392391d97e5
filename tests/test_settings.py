"""Every script answers ``--help`` (test_case/settings.py): what it does and every setting it reads
with its default, exit 0 and no side effect, in an empty folder with no ``sbatch`` on PATH; the
settings each script and env.sh read (``${NAME...}``) and those the launch and preflight read from
the environment are all in the registry; docs/training.md's "Settings" tables name every one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.settings import SCRIPTS, SETTINGS
from tests.conftest import REPO_ROOT

SCRIPT_DIR = REPO_ROOT / "slurm-scripts"
# set by the scripts themselves, by Slurm, by bash, or by the launcher for its ranks: not settings
INTERNAL = {
    "BASH_SOURCE", "CONTAINER_ARGS", "JOB_ID", "LOCAL_JOB_ID", "SECONDS", "ROOT", "SCRIPT", "PYTHONPATH",
    "VIRTUAL_ENV", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
}  # fmt: skip


def bash_reads(path: Path) -> set[str]:
    return {n for n in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", path.read_text()) if not n.startswith("SLURM")} - INTERNAL


def python_reads(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.glob("*.py"):
        names |= set(re.findall(r"(?:env|environ)(?:\.get)?[(\[]\s*\"([A-Z_][A-Z0-9_]*)\"", path.read_text()))
    return {n for n in names if not n.startswith("SLURM")} - INTERNAL


def registry(key: str) -> set[str]:
    return {s.name for s in SETTINGS if key in s.used_by}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_says_what_the_script_does_and_every_setting_it_reads_with_no_side_effect(
    script: str, tmp_path: Path
) -> None:
    tools = tmp_path / "bin"  # dirname and python3, and no sbatch
    tools.mkdir()
    (tools / "dirname").symlink_to("/usr/bin/dirname")
    (tools / "python3").symlink_to(sys.executable)
    cwd = tmp_path / "empty"
    cwd.mkdir()
    logs_before = sorted((REPO_ROOT / "logs").iterdir()) if (REPO_ROOT / "logs").is_dir() else []
    for flag in ("--help", "-h"):
        out = subprocess.run(
            ["/bin/bash", str(SCRIPT_DIR / script), flag],
            cwd=cwd,
            env={"PATH": str(tools)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (out.returncode, out.stderr) == (0, ""), out.stdout + out.stderr
        assert list(cwd.iterdir()) == []
    logs_after = sorted((REPO_ROOT / "logs").iterdir()) if (REPO_ROOT / "logs").is_dir() else []
    assert logs_after == logs_before  # no log, no preflight result
    first_comment = next(line for line in (SCRIPT_DIR / script).read_text().splitlines()[1:] if line.startswith("# "))
    assert out.stdout.startswith(first_comment[2:] + "\n")
    read = bash_reads(SCRIPT_DIR / script) | bash_reads(SCRIPT_DIR / "env.sh")
    listed = set(re.findall(r"^  ([A-Z_][A-Z0-9_]*) ", out.stdout, re.MULTILINE))
    assert read <= listed, sorted(read - listed)
    assert listed == registry(SCRIPTS[script])


def test_what_the_launch_and_the_preflight_read_is_in_the_registry() -> None:
    assert python_reads(REPO_ROOT / "test_case" / "training") <= registry("train")
    assert python_reads(REPO_ROOT / "test_case" / "preflight") <= registry("preflight")
    # the check reads real code: a name planted in a copy is caught
    assert "MADE_UP" in python_reads_of('x = env.get("MADE_UP")')


def python_reads_of(text: str) -> set[str]:
    return set(re.findall(r"(?:env|environ)(?:\.get)?[(\[]\s*\"([A-Z_][A-Z0-9_]*)\"", text))


def test_the_docs_settings_tables_name_every_setting() -> None:
    page = (REPO_ROOT / "docs" / "training.md").read_text()
    start = page.index("## Settings (environment variables)")
    tables = page[start:]  # the Settings table and the EFA and NCCL one, the last sections of the page
    assert "## EFA and NCCL" in tables
    named = set(re.findall(r"`([A-Z_][A-Z0-9_]*)`", tables))
    assert {s.name for s in SETTINGS} - named == set()
