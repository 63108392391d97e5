"""The container image built for real without Docker or a registry: a stand-in for the llm-foundry base,
the recipe built on it with buildah, and the built image entered the way enroot and pyxis enter it.

Where things live:
- `BASE_FACTS`: what the real base (``mosaicml/llm-foundry:2.7.0_cu128_aws-latest``) holds and sets that
  the recipe depends on, each with where it comes from, and how the stand-in reproduces it.
- `build_standin_base`: a Debian root file system (mmdebstrap) holding those facts, committed as
  ``localhost/mpt-standin-base``.
- `standin_recipe`: ``0.llm-foundry.Dockerfile`` with the only parts that need what this network cannot
  reach taken out, each named in `NOT_BUILT_HERE`; everything else is the recipe as written.
- `enter`: a command run in a built image as pyxis runs a task: no shell, no profile, no entrypoint; the
  job's environment with the image config's Env on top (the image's values win).

The store is ``IMAGE_STORE`` (default /var/tmp/mpt-suite-image) with the ``overlay`` storage driver
(``IMAGE_STORAGE_DRIVER=vfs`` where the kernel refuses overlay mounts: slower, and every layer is a full
copy on disk). Everything runs as root, with buildah's chroot isolation and no daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STORE = Path(os.environ.get("IMAGE_STORE", "/var/tmp/mpt-suite-image"))
DRIVER = os.environ.get("IMAGE_STORAGE_DRIVER", "overlay")
MARKER = ".mpt-suite-image-store"  # in a store this module made: the only kind `Buildah.remove_all` removes
BASE_TAG = "localhost/mpt-standin-base:latest"
IMAGE_TAG = "localhost/mpt-slurm-bench:standin"
TORCH = "torch==2.7.0"

# The base image's config (mosaicml/composer docker/Dockerfile, the pytorch stage that the llm-foundry
# 2.7.0_cu128_aws image is built on, over nvidia/cuda's): PATH without /composer-python, which
# reaches PATH only through /etc/profile and /etc/bash.bashrc, read by bash through BASH_ENV.
BASE_ENV_PATH = (
    "/opt/amazon/openmpi/bin/:/opt/amazon/efa/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:"
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)
BASE_ENV = {
    "PATH": BASE_ENV_PATH,
    "BASH_ENV": "/etc/profile",
    "LD_LIBRARY_PATH": "/usr/local/cuda/extras/CUPTI/lib64:/opt/amazon/openmpi/lib:/opt/amazon/efa/lib:"
    "/opt/aws-ofi-nccl/install/lib",
    "FI_EFA_USE_DEVICE_RDMA": "1",
}
PROFILE_LINE = "export PATH=~/.local/bin:/composer-python:$PATH"

# fact -> (the real base, from where; the stand-in)
BASE_FACTS: dict[str, tuple[str, str]] = {
    "python 3.12 at /composer-python": (
        "deadsnakes' /usr/bin/python3.12, linked as /composer-python/python, python3, python3.12 "
        '(composer docker/Dockerfile, "Use the correct python version")',
        "this machine's Python 3.12 (pyenv) copied to /usr/local, linked the same way",
    ),
    "/composer-python on PATH only through a shell": (
        f"`{PROFILE_LINE}` in /etc/profile and /etc/bash.bashrc, ENV BASH_ENV=/etc/profile; the config's PATH lacks it",
        "the same lines and the same config",
    ),
    "an older python3 first on the default PATH": (
        "Ubuntu 22.04's /usr/bin/python3 (3.10), without torch or any of the image's packages",
        "Debian 12's /usr/bin/python3 (3.11), likewise bare",
    ),
    "pip as root installs scripts on the default PATH": (
        "Debian's python3.12 installs to /usr/local/lib/python3.12/dist-packages and /usr/local/bin",
        "prefix /usr/local: /usr/local/lib/python3.12/site-packages and /usr/local/bin",
    ),
    "torch 2.7.0 with CUDA": (
        "torch 2.7.0 built for CUDA 12.8 (the image's tag), flash-attn built against it",
        "PyPI's torch 2.7.0 (built for CUDA 12.6) with its nvidia-* wheels; no flash-attn (NOT_BUILT_HERE)",
    ),
    "EFA and OpenMPI": (
        "/opt/amazon/openmpi, /opt/amazon/efa, /opt/aws-ofi-nccl/install (efa_installer, aws-ofi-nccl) on "
        "PATH and LD_LIBRARY_PATH",
        "the same folders, empty, on the same PATH and LD_LIBRARY_PATH",
    ),
    "build tools": ("git, make, bash (nvidia/cuda devel and the apt steps)", "git, make, bash from Debian 12"),
}

# What the recipe needs that cannot be had here, and how its inputs are proven instead.
NOT_BUILT_HERE = {
    "flash-attn check": "the base's own CUDA build of flash-attn: `make gpu-smoke` proves it on a GPU",
    "nccl-tests build": "cloned from GitHub (unreachable here): its commit is checked against the release "
    "tags (tests/test_container.py) and its NVCC_GENCODE compiled by nvcc here",
    "all_reduce_perf check": "the binary the nccl-tests build makes",
}

# The adaptation to this network, not a fact of the base: pip reaches PyPI through a TLS proxy whose
# CA is in this machine's bundle.
NETWORK_ADAPTATION = "this machine's CA bundle, and /etc/pip.conf pointing pip at it"


@dataclass(frozen=True)
class Buildah:
    """buildah on its own store, with chroot isolation: no daemon, no registry."""

    store: Path = STORE
    driver: str = DRIVER
    log: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """buildah ``args``; a call past ``timeout`` seconds (a stalled mirror) raises with the log so far."""
        self.store.mkdir(parents=True, exist_ok=True)
        (self.store / MARKER).touch()
        cmd = ["buildah", "--storage-driver", self.driver, "--root", str(self.store / "root")]
        cmd += ["--runroot", str(self.store / "run"), *args]
        started = time.monotonic()
        try:
            out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(
                f"buildah {' '.join(args)}: no end after {timeout:.0f} s\n" + "\n".join(self.log)
            ) from err
        self.log.append(f"{time.monotonic() - started:6.1f} s  buildah {' '.join(args)[:120]} -> {out.returncode}")
        if check and out.returncode != 0:
            raise RuntimeError(
                f"buildah {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr}"
            )
        return out

    def has_image(self, tag: str) -> bool:
        return self("inspect", "--type", "image", tag, check=False).returncode == 0

    def image_env(self, tag: str) -> dict[str, str]:
        """The image config's Env (what enroot writes to the container's /etc/environment)."""
        config = json.loads(self("inspect", "--type", "image", tag).stdout)["OCIv1"]["config"]
        return dict(item.split("=", 1) for item in config.get("Env") or [])

    def mount(self, tag: str) -> tuple[str, Path]:
        """A working container of ``tag`` and its root file system on this machine."""
        ctr = self("from", "--pull-never", tag).stdout.strip()
        return ctr, Path(self("mount", ctr).stdout.strip())

    def remove_all(self) -> None:
        """Every container and image of this store, then the store itself (mounts first). Only a store
        this module made (its `MARKER` file) is removed."""
        if not (self.store / MARKER).exists():
            return
        self("rm", "--all", check=False)
        self("rmi", "--all", "--force", check=False)
        subprocess.run(["umount", "-R", str(self.store / "root" / self.driver)], capture_output=True, check=False)
        shutil.rmtree(self.store, ignore_errors=True)


def tools_missing() -> list[str]:
    return [tool for tool in ("buildah", "mmdebstrap", "unshare", "chroot") if shutil.which(tool) is None]


def run_in_root(
    root: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str = "/",
    binds: Sequence[Path] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``argv`` executed directly in the root file system ``root`` (no shell inside it), with exactly
    ``env``, in ``cwd``, in a mount namespace of its own holding /dev, /proc, /sys and ``binds`` (each at
    its own path), as enroot sets up a container."""
    mounts = ['mount --rbind /dev "$R/dev"', 'mount -t proc proc "$R/proc"', 'mount --rbind /sys "$R/sys"']
    for i in range(len(binds)):
        mounts.append(f'mkdir -p "$R/$B{i}" && mount --bind "$B{i}" "$R/$B{i}"')
    script = " && ".join(mounts) + ' && exec chroot "$R" /usr/bin/env -i "$@"'
    variables = {"R": str(root), **{f"B{i}": str(path) for i, path in enumerate(binds)}}
    assignments = [f"{k}={v}" for k, v in env.items()]
    cmd = ["unshare", "--mount", "--propagation", "private", "--fork", "--pid", "--"]
    cmd += ["env", *[f"{k}={v}" for k, v in variables.items()], "sh", "-c", script, "enter"]
    cmd += [f"--chdir={cwd}", *assignments, *argv]  # env's options before its first NAME=VALUE
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(argv)}: no end after {timeout:.0f} s")


def container_env(image_env: Mapping[str, str], job_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a pyxis task: the job's exported variables, then the image config's Env over
    them. pyxis' --container-env help: "all exported host environment variables are set in the container
    after the entrypoint is run, but their existing values in the image take precedence" (also
    NVIDIA/pyxis#124). So PATH is the image's, whatever the job's was."""
    return {**job_env, **image_env}


def enter(
    root: Path, image_env: Mapping[str, str], argv: Sequence[str], suite: Path
) -> subprocess.CompletedProcess[str]:
    """``argv`` as srun with env.sh's CONTAINER_ARGS runs it: the suite mounted at its own path and the
    working directory (--container-mounts=$ROOT:$ROOT --container-workdir=$ROOT), env.sh's exports in the
    job's environment, the command executed directly."""
    job = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(suite),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "IMAGE": str(suite / "llm-foundry.sqsh"),
    }
    return run_in_root(root, argv, container_env(image_env, job), cwd=str(suite), binds=[suite])


def python312_prefix() -> Path:
    """A CPython 3.12 installation to copy: ``STANDIN_PYTHON312``, else pyenv's newest 3.12."""
    named = os.environ.get("STANDIN_PYTHON312")
    found = [Path(named)] if named else sorted(Path("/root/.pyenv/versions").glob("3.12.*"))
    for prefix in reversed(found):
        if (prefix / "bin" / "python3.12").exists() and list((prefix / "lib").glob("libpython3.12.so*")):
            return prefix
    raise RuntimeError("no CPython 3.12 (shared) found: set STANDIN_PYTHON312 to its prefix (pyenv install 3.12)")


def build_standin_base(b: Buildah, work: Path) -> None:
    """``BASE_TAG``: a Debian 12 root file system with `BASE_FACTS`, committed with the base's Env."""
    started, timings = time.monotonic(), b.log
    ctr = b("from", "scratch").stdout.strip()
    try:  # the working container goes, whatever fails
        root = Path(b("mount", ctr).stdout.strip())
        packages = "bash,git,make,ca-certificates,python3,libexpat1"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={packages}", "bookworm", str(root)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        timings.append(f"{time.monotonic() - started:6.1f} s  stand-in: mmdebstrap")
        # Python 3.12 at prefix /usr/local: interpreter, its library, its standard library and headers (as
        # python3.12-dev has them). Not its tests, not this machine's site-packages but pip.
        src = python312_prefix()
        (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "bin" / "python3.12", root / "usr/local/bin" / "python3.12")
        for lib in (src / "lib").glob("libpython3.12.so*"):
            shutil.copy2(lib, root / "usr/local/lib" / lib.name, follow_symlinks=False)
        shutil.copytree(src / "include", root / "usr/local/include", dirs_exist_ok=True, symlinks=True)
        keep_site = {"pip", "README.txt"}
        shutil.copytree(
            src / "lib" / "python3.12",
            root / "usr/local/lib/python3.12",
            symlinks=True,
            ignore=lambda d, names: {"test", "__pycache__"}
            | (
                {n for n in names if not n.startswith("pip") and n not in keep_site}
                if d.endswith("site-packages")
                else set()
            ),
        )
        composer_python = root / "composer-python"
        composer_python.mkdir()
        for name in ("python", "python3", "python3.12"):
            (composer_python / name).symlink_to("/usr/local/bin/python3.12")
        for rc in ("etc/profile", "etc/bash.bashrc"):
            with (root / rc).open("a") as f:
                f.write(PROFILE_LINE + "\n")
        for folder in ("opt/amazon/openmpi/bin", "opt/amazon/openmpi/lib", "opt/amazon/efa/bin", "opt/amazon/efa/lib"):
            (root / folder).mkdir(parents=True)
        (root / "opt/aws-ofi-nccl/install/lib").mkdir(parents=True)
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        # torch with uv (parallel downloads and unpacking: about a minute less than pip), run inside the root
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        shutil.copy2(uv, root / "tmp" / "uv")
        setup = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "UV_CACHE_DIR": "/tmp/uv-cache"}
        install = [
            "/tmp/uv",
            "pip",
            "install",
            "--quiet",
            "--system",
            "--native-tls",
            "--python",
            "/usr/local/bin/python3.12",
        ]
        for argv in (["/sbin/ldconfig"], [*install, TORCH]):
            out = run_in_root(root, argv, setup, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(
                    f"stand-in base: {' '.join(argv)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
                )
            timings.append(f"{time.monotonic() - started:6.1f} s  stand-in: {' '.join(argv)[:80]}")
        shutil.rmtree(root / "tmp" / "uv-cache", ignore_errors=True)
        (root / "tmp" / "uv").unlink()
        (root / "etc/resolv.conf").unlink()
        b("umount", ctr)
        config = [arg for k, v in BASE_ENV.items() for arg in ("--env", f"{k}={v}")]
        b("config", *config, ctr)
        b("commit", "--quiet", "--format", "docker", ctr, BASE_TAG)
    finally:
        b("umount", ctr, check=False)
        b("rm", ctr, check=False)


def standin_recipe(dockerfile: str) -> tuple[str, dict[str, str]]:
    """The recipe as written, less the parts in `NOT_BUILT_HERE` (each must be found exactly once)."""
    removed: dict[str, str] = {}
    patterns = {
        "flash-attn check": r" \\\n && python3 -c \"import flash_attn;[^\n]*\n[^\n]*\n",
        "nccl-tests build": r"^RUN git clone [^\n]*nccl-tests\.git.*?rm -rf /opt/nccl-tests/\.git\n",
        "all_reduce_perf check": r" \\\n && test -x /opt/nccl-tests/build/all_reduce_perf",
    }
    for name, pattern in patterns.items():
        found = re.findall(pattern, dockerfile, flags=re.M | re.S)
        if len(found) != 1:
            raise ValueError(
                f"standin_recipe: {name!r} found {len(found)} times in the recipe: update tests/image_standin.py"
            )
        removed[name] = found[0]
        dockerfile = dockerfile.replace(found[0], "\n" if name == "flash-attn check" else "", 1)
    return dockerfile, removed


def build_args(repo: Path) -> list[str]:
    """The build arguments `make image` passes (Makefile, target image), read from pyproject.toml."""
    text = (repo / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.*)"', text, re.M)
    foundry = re.search(r'"llm-foundry==([^"]*)"', text)
    streaming = re.search(r'"mosaicml-streaming==([^"]*)"', text)
    assert version and foundry and streaming, "pyproject.toml: version and the two pins"
    values = {
        "BASE_IMAGE": BASE_TAG,
        "SUITE_VERSION": version.group(1),
        "LLMFOUNDRY_VERSION": foundry.group(1),
        "STREAMING_VERSION": streaming.group(1),
    }
    return [arg for k, v in values.items() for arg in ("--build-arg", f"{k}={v}")]


def build(b: Buildah, recipe: str, context: Path, work: Path, tag: str) -> subprocess.CompletedProcess[str]:
    """``recipe`` built in ``context`` as `make image` builds it, Docker's format (SHELL kept), one commit."""
    path = work / f"{tag.rsplit(':', 1)[-1]}.Containerfile"
    path.write_text(recipe)
    args = ["bud", "--isolation", "chroot", "--format", "docker", "--layers=false", "--pull-never"]
    return b(*args, *build_args(context), "-f", str(path), "-t", tag, str(context), check=False)


def disk_used(path: Path) -> int:
    out = subprocess.run(["du", "-sx", "--block-size=1", str(path)], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0
