"""Working habits: the pre-commit hooks run offline and catch what `make lint` catches."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_pre_commit_hooks_fail_on_bad_python_shell_and_yaml_and_pass_once_fixed(tmp_path: Path) -> None:
    """A scratch repository with the project's hook config and venv, and one bad file per hook."""
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "yamls").mkdir()
    (repo / "slurm-scripts").mkdir()
    shutil.copy(REPO_ROOT / ".pre-commit-config.yaml", repo)
    shutil.copy(REPO_ROOT / "pyproject.toml", repo)  # ruff's settings
    shutil.copy(REPO_ROOT / "tests" / "check_yamls.py", repo / "tests")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
    (repo / "bad.py").write_text("import os\n")  # unused import (ruff F401)
    (repo / "slurm-scripts" / "bad.sbatch").write_text("#!/usr/bin/env bash\necho $1\n")  # SC2086
    (repo / "yamls" / "bad.yaml").write_text("a: ${variables.nope}\n")  # an interpolation that fails
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_CONFIG_GLOBAL": "/dev/null"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    assert _run([*git, "init", "-q"], repo, env).returncode == 0
    assert _run([*git, "add", "-A"], repo, env).returncode == 0

    failed = _run([str(REPO_ROOT / ".venv" / "bin" / "pre-commit"), "run", "--all-files"], repo, env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout
    assert "F401" in out and "SC2086" in out and "yamls/bad.yaml: Interpolation key 'variables.nope'" in out
    assert "ruff format" in out and "Passed" in out  # the formatter had nothing to change

    (repo / "bad.py").write_text("import os\n\nprint(os.sep)\n")
    (repo / "slurm-scripts" / "bad.sbatch").write_text('#!/usr/bin/env bash\necho "$1"\n')
    (repo / "yamls" / "bad.yaml").write_text("variables:\n  x: 1\na: ${variables.x}\n")
    assert _run([*git, "add", "-A"], repo, env).returncode == 0
    passed = _run([str(REPO_ROOT / ".venv" / "bin" / "pre-commit"), "run", "--all-files"], repo, env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.count("Passed") == 4
