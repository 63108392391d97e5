"""The container image built for real: ``0.llm-foundry.Dockerfile`` built with buildah on a stand-in for
its base (tests/image_standin.py says what the stand-in reproduces and what it cannot), then entered as
pyxis enters it to run what the sbatch scripts run.

`make test-image` (marker ``image``; `.ci/run` runs it after `make test`, about 8 minutes, about 8 GB under
IMAGE_STORE, removed afterwards; KEEP_IMAGE_STORE=1 keeps the store and reuses the stand-in base next time).
Needs root, buildah and mmdebstrap (Debian packages), PyPI, and nvcc for the nccl-tests proof.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.image_standin import (
    BASE_ENV_PATH,
    BASE_TAG,
    IMAGE_TAG,
    NOT_BUILT_HERE,
    STORE,
    Buildah,
    build,
    build_standin_base,
    disk_used,
    enter,
    standin_recipe,
    tools_missing,
)

pytestmark = [pytest.mark.image, pytest.mark.slow]

DOCKERFILE = (REPO_ROOT / "0.llm-foundry.Dockerfile").read_text()
KEEP = os.environ.get("KEEP_IMAGE_STORE") == "1"
PINS = dict(re.findall(r'"([\w-]+)==([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text()))


@dataclass
class Built:
    b: Buildah
    build: subprocess.CompletedProcess[str]
    root: Path  # the built image's root file system, mounted
    env: dict[str, str]  # its config's Env
    base_root: Path
    base_env: dict[str, str]
    work: Path


def say(config: pytest.Config, line: str) -> None:
    """Figures for the console (CI keeps only it): the build's time and disk, past pytest's capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[image] {line}", flush=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Built:
    if missing := tools_missing():
        pytest.fail(f"{', '.join(missing)} not found: apt-get install buildah mmdebstrap (.ci/run does)")
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (buildah's chroot isolation, mmdebstrap, mounts)")
    work = tmp_path_factory.mktemp("image")
    b = Buildah()
    if not KEEP:
        b.remove_all()

    def clean_up() -> None:  # registered first: it runs when anything below fails too
        b("rm", "--all", check=False)  # every working container, mounted or not
        if not KEEP:
            b.remove_all()

    request.addfinalizer(clean_up)
    started = time.monotonic()
    if not b.has_image(BASE_TAG):
        build_standin_base(b, work)
    base_s = time.monotonic() - started
    recipe, _ = standin_recipe(DOCKERFILE)
    out = build(b, recipe, REPO_ROOT, work, IMAGE_TAG)
    build_s = time.monotonic() - started - base_s
    _, base_root = b.mount(BASE_TAG)
    built = Built(b, out, base_root, {}, base_root, b.image_env(BASE_TAG), work)
    if out.returncode == 0:
        _, built.root = b.mount(IMAGE_TAG)
        built.env = b.image_env(IMAGE_TAG)
    disk = disk_used(STORE) / 1e9
    say(request.config, f"stand-in base {base_s:.0f} s, the recipe's build {build_s:.0f} s, store {disk:.1f} GB")
    say(request.config, "\n".join(b.log))
    return built


def test_the_recipe_builds_on_the_standin_base(built: Built) -> None:
    assert built.build.returncode == 0, built.build.stdout[-6000:] + built.build.stderr[-3000:]
    log = built.build.stdout
    # the base check (torch from the base, with CUDA) and the exec-form RUN (python without a shell)
    assert re.search(r"^torch 2\.7\.0\S* cuda 12\.\d+$", log, re.M), log[-3000:]
    assert re.search(r"^python without a shell: /composer-python/python 3\.12\.\d+$", log, re.M), log[-3000:]
    # only what NOT_BUILT_HERE names was taken out; every other RUN step ran
    recipe, removed = standin_recipe(DOCKERFILE)
    assert set(removed) == set(NOT_BUILT_HERE)
    # each part taken out is exactly what its name says, nothing of the steps around it
    flash = removed["flash-attn check"]
    # the line break before it (the torch check's continuation) and its own two lines
    assert flash.count("\n") == 3 and "import flash_attn" in flash and "flash_attn.__version__)" in flash
    clone = removed["nccl-tests build"]
    assert clone.startswith("RUN git clone") and clone.endswith("rm -rf /opt/nccl-tests/.git\n")
    assert not re.search(r"^(RUN|ENV|COPY|ARG|WORKDIR|LABEL|FROM) ", clone[4:], re.M)  # one instruction
    assert removed["all_reduce_perf check"] == " \\\n && test -x /opt/nccl-tests/build/all_reduce_perf"
    kept = [line for line in DOCKERFILE.splitlines() if line.strip()]
    dropped = [line for part in removed.values() for line in part.splitlines() if line.strip()]
    assert len([line for line in recipe.splitlines() if line.strip()]) >= len(kept) - len(dropped)
    runs = re.findall(r"^RUN ", recipe, re.M)
    assert (
        len(re.findall(r"^STEP \d+/\d+: RUN ", log, re.M))
        == len(runs)
        == len(re.findall(r"^RUN ", DOCKERFILE, re.M)) - 1
    )


def test_the_standin_base_sets_the_trap_the_recipe_must_avoid(built: Built) -> None:
    """Entered as pyxis enters it, the base has no `python` and a bare `python3`; only a shell (BASH_ENV)
    finds the 3.12 with torch, which is how Docker's RUN found it and pyxis does not."""
    assert built.base_env["PATH"] == BASE_ENV_PATH and built.base_env["BASH_ENV"] == "/etc/profile"
    no_python = enter(built.base_root, built.base_env, ["python", "--version"], REPO_ROOT)
    assert no_python.returncode == 127 and "No such file or directory" in no_python.stderr, no_python
    bare = enter(built.base_root, built.base_env, ["python3", "-c", "import sys; print(sys.version)"], REPO_ROOT)
    assert bare.returncode == 0 and not bare.stdout.startswith("3.12"), bare
    no_torch = enter(built.base_root, built.base_env, ["python3", "-c", "import torch"], REPO_ROOT)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    probe = "import sys, torch; print(sys.version.split()[0], torch.__version__)"
    through_bash = enter(built.base_root, built.base_env, ["bash", "-c", f"python -c '{probe}'"], REPO_ROOT)
    assert through_bash.returncode == 0 and re.match(r"3\.12\.\d+ 2\.7\.0", through_bash.stdout), through_bash


def sbatch_commands() -> list[list[str]]:
    """What the sbatch scripts run in the container, as argv: each ``python -m MODULE`` they name, report.py,
    and the launchers that `launch node` starts (Composer's, llm-foundry's)."""
    scripts = "".join(p.read_text() for p in (REPO_ROOT / "slurm-scripts").glob("*.sbatch"))
    modules = sorted(set(re.findall(r"\bpython -m ([\w.]+)", scripts)))
    assert {"preprocessing", "test_case.training.launch", "test_case.preflight"} <= set(modules)
    return [
        *[["python", "-m", m, "--help"] for m in modules],
        ["python", "report.py", "--help"],
        ["composer", "--help"],
        ["llmfoundry", "--help"],
    ]


def test_every_command_the_sbatch_scripts_run_works_as_pyxis_starts_it(built: Built) -> None:
    assert built.build.returncode == 0, "the build failed: see the first test"
    assert built.env["PATH"] == f"/opt/nccl-tests/build:/composer-python:{BASE_ENV_PATH}"
    which = enter(built.root, built.env, ["python", "-c", "import sys; print(sys.executable, sys.version)"], REPO_ROOT)
    assert which.returncode == 0 and which.stdout.startswith("/composer-python/python 3.12"), which
    for argv in sbatch_commands():
        out = enter(built.root, built.env, argv, REPO_ROOT)
        assert out.returncode == 0, (argv, out.stdout[-2000:], out.stderr[-3000:])
    # the launch's own first steps, for a real model: the Composer command and the run header
    plan = enter(built.root, built.env, ["python", "-m", "test_case.training.launch", "plan", "mpt-7b"], REPO_ROOT)
    assert plan.returncode == 0 and plan.stdout.startswith("composer --nproc"), plan
    header = enter(built.root, built.env, ["python", "-m", "test_case.training.launch", "header", "mpt-7b"], REPO_ROOT)
    assert header.returncode == 0, header
    assert re.search(r"^\[run-header\] python: 3\.12\.\d+$", header.stdout, re.M), header.stdout
    assert f"[run-header] image: {REPO_ROOT / 'llm-foundry.sqsh'}" in header.stdout  # env.sh's IMAGE, from the job
    assert (
        "[run-header] torch: 2.7.0" in header.stdout
        and f"[run-header] llm_foundry: {PINS['llm-foundry']}" in header.stdout
    )


def non_run_instructions(dockerfile: str) -> str:
    """The recipe's instructions other than RUN (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    return "\n".join(line for line in joined.splitlines() if line.strip() and not line.startswith(("RUN ", "#")))


def test_the_recipe_before_the_path_fix_fails_as_pyxis_starts_it(built: Built) -> None:
    """The recipe without ``ENV PATH="/composer-python:${PATH}"`` (before fd1158c): its image finds no
    `python` the way pyxis starts a task, and its build-time check in exec form fails."""
    old = re.sub(r'^ENV PATH="/composer-python:\$\{PATH\}"\n', "", DOCKERFILE, flags=re.M)
    assert old != DOCKERFILE
    config_only = non_run_instructions(old)
    out = build(built.b, config_only, REPO_ROOT, built.work, "localhost/mpt-old-recipe:config")
    assert out.returncode == 0, out.stderr[-3000:]
    ctr, root = built.b.mount("localhost/mpt-old-recipe:config")
    try:
        env = built.b.image_env("localhost/mpt-old-recipe:config")
        no_python = enter(root, env, ["python", "-m", "test_case.training.launch", "--help"], REPO_ROOT)
        assert no_python.returncode == 127 and "No such file or directory" in no_python.stderr, no_python
    finally:
        built.b("umount", ctr, check=False)
        built.b("rm", ctr, check=False)
    (exec_form,) = re.findall(r"^RUN \[.*\]$", DOCKERFILE, re.M)
    failed = build(built.b, f"{config_only}\n{exec_form}\n", REPO_ROOT, built.work, "localhost/mpt-old-recipe:check")
    assert failed.returncode != 0 and re.search(r"python.*(not found|no such file)", failed.stderr, re.I), failed.stderr


def nvcc() -> str:
    found = shutil.which("nvcc") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc"))), None)
    if found is None:
        pytest.fail("nvcc not found on PATH or in /usr/local/cuda*/bin: install CUDA's compiler (12.8 or newer)")
    return found


def test_the_nccl_tests_build_flags_compile_for_a100_h100_and_b200(tmp_path: Path) -> None:
    """What the nccl-tests step would compile, compiled here by nvcc: the recipe's NVCC_GENCODE builds
    sm_80, sm_90 and sm_100 (and PTX for newer GPUs); the old recipe's default, compute_30, is refused."""
    (gencode,) = re.findall(r'^ARG NCCL_TESTS_GENCODE="(.*)"$', DOCKERFILE, re.M)
    kernel = tmp_path / "k.cu"
    kernel.write_text("__global__ void k(float *x) { x[threadIdx.x] += 1.0f; }\n")
    cmd = [nvcc(), "-c", str(kernel), "-o", str(tmp_path / "k.o"), *gencode.split()]
    ok = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    dry = subprocess.run([*cmd, "--dryrun"], capture_output=True, text=True, check=False)
    assert set(re.findall(r"ptxas\S* .*?-arch=sm_(\d+)", dry.stderr)) == {"80", "90", "100"}, dry.stderr
    old = subprocess.run(
        [nvcc(), "-c", str(kernel), "-o", str(tmp_path / "old.o"), "-gencode=arch=compute_30,code=sm_30"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert old.returncode != 0 and "Unsupported gpu architecture 'compute_30'" in old.stderr
