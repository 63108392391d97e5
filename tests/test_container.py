"""The container image: pins from the project's own files, everything the sbatch scripts need from it.

No Docker engine, registry or enroot is available where these tests run, so the Dockerfile is
checked statically (and by hadolint in ``make lint``); what it does at build time is exercised on a
real build only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from test_case.training.launch import composer_command
from test_case.training.node_plan import plan_node
from test_case.training.run_config import resolve_yaml
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
    (smoke,) = [step for step in RUN_STEPS if step.startswith("python --version")]
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


# Releases of github.com/NVIDIA/nccl-tests and their commits (lightweight tags), read from the
# upstream repository on 2026-12-05. b188a15 is its "Initial commit" of 2017-08-08, whose Makefile
# builds for compute_30, which CUDA 12's nvcc rejects.
NCCL_TESTS_RELEASES = {
    "v2.19.6": "a0b82b2260cf5152b9f8c061bbf7eaf0ba096432",
    "v2.19.5": "5bcd45d2ee8365e37895e118c9d11b0ebc15aa69",
    "v2.19.4": "358ca293f16b1248fead83353520d5768fee07c8",
    "v2.13.13": "cb6a46fdd677783eec470e3df09aa138891bfebf",
}


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf'^ARG {name}="?(.*?)"?$', DOCKERFILE, re.M)
    return value


def test_nccl_tests_is_a_release_built_for_a100_h100_and_b200() -> None:
    version, commit = dockerfile_arg("NCCL_TESTS_VERSION"), dockerfile_arg("NCCL_TESTS_COMMIT")
    assert NCCL_TESTS_RELEASES.get(version) == commit, (version, commit)
    (build,) = [step for step in RUN_STEPS if "nccl-tests.git" in step]
    assert '--branch "${NCCL_TESTS_VERSION}"' in build
    assert 'test "$(git -C /opt/nccl-tests rev-parse HEAD)" = "${NCCL_TESTS_COMMIT}"' in build
    assert 'NVCC_GENCODE="${NCCL_TESTS_GENCODE}"' in build
    archs = set(re.findall(r"code=sm_(\d+)", dockerfile_arg("NCCL_TESTS_GENCODE")))
    assert archs == {"80", "90", "100"}  # A100, H100/H200, B200/GB200; CUDA 12.8 builds all three


# What the base image holds and sets (mosaicml/composer docker/Dockerfile, the pytorch stage the
# llm-foundry 2.7.0_cu128_aws image is built on; nvidia/cuda's default PATH): the image config's
# PATH, and where each Python is. /composer-python reaches PATH only through /etc/profile (BASH_ENV).
BASE_ENV_PATH = (
    "/opt/amazon/openmpi/bin/:/opt/amazon/efa/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:"
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)
BASE_PYTHONS = {
    "/composer-python/python": "3.12",
    "/composer-python/python3": "3.12",
    "/usr/bin/python3.12": "3.12",
    "/usr/bin/python3": "3.10",  # Ubuntu 22.04's own, without the image's packages
}


def image_env_path(dockerfile: str) -> str:
    """The PATH of the built image's config: the base's, then each ``ENV PATH=`` of the Dockerfile
    in order (Docker expands ``${PATH}`` at build time). This is the whole PATH a pyxis task gets."""
    path = BASE_ENV_PATH
    for value in re.findall(r'^ENV PATH="([^"]*)"', dockerfile, re.M):
        path = value.replace("${PATH}", path)
    return path


def which(command: str, path: str) -> str | None:
    return next(
        (f"{d.rstrip('/')}/{command}" for d in path.split(":") if f"{d.rstrip('/')}/{command}" in BASE_PYTHONS), None
    )


def test_python_is_found_the_way_pyxis_starts_a_task() -> None:
    """pyxis execs the srun command with no shell and the image's Env only (enroot writes the
    config's Env to /etc/environment; no /etc/profile, no BASH_ENV), so `python` must be on that PATH."""
    path = image_env_path(DOCKERFILE)
    assert which("python", path) == "/composer-python/python", path
    assert BASE_PYTHONS[which("python3", path) or ""] == "3.12"  # not Ubuntu's 3.10
    assert path.startswith("/opt/nccl-tests/build:")  # all_reduce_perf too
    # the recipe before this fix: no python at all under pyxis, python3 Ubuntu's
    before = re.sub(r'^ENV PATH="/composer-python:\$\{PATH\}"\n', "", DOCKERFILE, flags=re.M)
    assert before != DOCKERFILE and which("python", image_env_path(before)) is None
    # the build checks it the same way: a RUN in exec form has no shell, only the image's Env
    (exec_form,) = re.findall(r"^RUN \[(.*)\]$", DOCKERFILE, re.M)
    assert exec_form.startswith('"python", "-c", "import sys, composer, llmfoundry, preprocessing, test_case;')


def test_the_imported_image_lands_where_the_scripts_look() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^SQSH \?= llm-foundry\.sqsh$", makefile, re.M)
    assert 'enroot import -o "$(SQSH)" "dockerd://$(IMAGE_TAG)"' in makefile
    assert '"$ROOT/llm-foundry.sqsh"' in (REPO_ROOT / "slurm-scripts" / "env.sh").read_text()


def resolved_image(root: Path, image: str | None) -> str:
    """IMAGE as env.sh resolves it in a suite at ``root`` (env.sh's suite is the folder above it)."""
    (root / "slurm-scripts").mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / "slurm-scripts" / "env.sh", root / "slurm-scripts")
    setting = "unset IMAGE" if image is None else f"export IMAGE={image!r}"
    script = f'{setting}; VENV=/nonexistent; source {root}/slurm-scripts/env.sh; echo "$IMAGE"'
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
