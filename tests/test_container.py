"""The container image: pins from the project's own files, everything the sbatch scripts need from it.

No Docker engine, registry or enroot is available where these tests run, so the Dockerfile is
checked statically (and by hadolint in ``make lint``); what it does at build time is exercised on a
real build only.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from test_case.training.launch import composer_command, plan_node, resolve_yaml
from tests.conftest import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "0.llm-foundry.Dockerfile").read_text()
RUN_STEPS = [" ".join(step.split()) for step in re.findall(r"^RUN (.*?)(?<!\\)$", DOCKERFILE, re.M | re.S)]
CUDA_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==")


def pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M))


def test_python_pins_in_the_image_come_from_the_project_lock() -> None:
    installs = [s for s in RUN_STEPS if "pip install" in s]
    assert len(installs) == 1, "one pip install, from the lock"
    (install,) = installs
    assert "grep -vE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==' constraints-py312.txt" in install
    assert "-c /tmp/constraints-image.txt ." in install
    assert not re.search(r"pip install[^&]*\b[A-Za-z0-9_.-]+==", install), "no second list of pins"
    assert "COPY pyproject.toml constraints-py312.txt" in DOCKERFILE

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    direct = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", "\n".join(project["dependencies"]), re.M))
    image_lock, dev_lock = pins(REPO_ROOT / "constraints-py312.txt"), pins(REPO_ROOT / "constraints.txt")
    assert direct == {"llm-foundry": "0.22.0", "mosaicml-streaming": "0.12.0"}
    for name, version in direct.items():
        assert image_lock[name] == dev_lock[name] == version
    for shared in ("mosaicml", "transformers", "tokenizers", "torch", "omegaconf"):  # the stack both must agree on
        assert image_lock[shared] == dev_lock[shared]
    # The base provides the CUDA stack; the Dockerfile checks it is the torch the lock expects.
    kept = [
        line for line in (REPO_ROOT / "constraints-py312.txt").read_text().splitlines() if not CUDA_STACK.match(line)
    ]
    assert "llm-foundry==0.22.0" in kept and not any(line.startswith(("torch==", "nvidia-")) for line in kept)
    assert f"torch.__version__.startswith('{image_lock['torch']}')" in DOCKERFILE


def test_what_the_sbatch_scripts_run_in_the_container_is_checked_at_build_time() -> None:
    smoke = RUN_STEPS[-1]
    scripts = "".join(p.read_text() for p in (REPO_ROOT / "slurm-scripts").glob("*.sbatch"))
    modules = set(re.findall(r"\bpython -m ([\w.]+)", scripts))
    assert modules == {
        "preprocessing",
        "test_case.training.launch",
        "test_case.training.restarts",
        "test_case.preflight",
    }
    for module in modules:
        assert f"python -m {module} --help" in smoke
    plan = plan_node({"LOCAL_JOB_ID": "x"}, gpus=8)
    launched = composer_command(plan, resolve_yaml("mpt-7b"), [], {})
    assert launched[0] == "composer" and f"{launched[0]} --help" in smoke
    assert launched[launched.index("-m") + 1] == "test_case.training.foundry_train" and "llmfoundry --help" in smoke
    assert "python report.py --help" in smoke and "test -x /opt/nccl-tests/build/all_reduce_perf" in smoke
    assert 'PATH="/opt/nccl-tests/build:${PATH}"' in DOCKERFILE


def test_the_imported_image_lands_where_the_scripts_look() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^SQSH \?= llm-foundry\.sqsh$", makefile, re.M)
    assert 'enroot import -o "$(SQSH)" "dockerd://$(IMAGE_TAG)"' in makefile
    assert '"$ROOT/llm-foundry.sqsh"' in (REPO_ROOT / "slurm-scripts" / "env.sh").read_text()


def resolved_image(root: Path, image: str | None) -> str:
    setting = "unset IMAGE" if image is None else f"export IMAGE={image!r}"
    script = f'{setting}; ROOT={str(root)!r}; VENV=/nonexistent; source {REPO_ROOT}/slurm-scripts/env.sh; echo "$IMAGE"'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def test_env_sh_uses_the_imported_image_when_present(tmp_path: Path) -> None:
    assert resolved_image(tmp_path, None) == ""  # no image: bare metal
    (tmp_path / "llm-foundry.sqsh").write_bytes(b"")
    assert resolved_image(tmp_path, None) == str(tmp_path / "llm-foundry.sqsh")
    assert resolved_image(tmp_path, "") == ""  # explicitly bare metal
    assert resolved_image(tmp_path, "/fsx/x.sqsh") == "/fsx/x.sqsh"


def test_a_configured_but_missing_image_fails_before_anything_runs(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLURM_JOB_ID": "7",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        "IMAGE": str(tmp_path / "missing.sqsh"),
        "SLURM_JOB_NODELIST": "n1",
        "VENV": "/nonexistent",
        "C4_INPUT": str(tmp_path),
    }
    for script in ("1.c4-preprocess.sbatch", "2.train-mpt-manual-distributed.sbatch"):
        out = subprocess.run(
            ["bash", str(REPO_ROOT / "slurm-scripts" / script)], env=env, capture_output=True, text=True, check=False
        )
        assert out.returncode == 2, out.stderr
        assert f"IMAGE={tmp_path / 'missing.sqsh'} does not exist: build and import it first" in out.stderr
        assert "srun" not in out.stderr
