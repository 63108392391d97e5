"""``make bundle``: one folder, made on a connected machine, that installs and runs the suite offline.

(At about 450 lines over the suite's 400: the steps below are one sequence, each a short function.)

Steps, each printed as it runs:

1. **Wheels** of the lock (``constraints.txt``) and the installer's own tools (pip, setuptools,
   wheel), for this machine's Python: ``pip wheel --no-deps`` takes each pinned release from the
   index and builds a wheel for the few published only as source (antlr4-python3-runtime), so the
   offline install never builds from source. With ``--image-wheels`` also the image's Python
   (``constraints-py312.txt`` less what the base image ships: torch, torchvision, triton, nvidia-*),
   downloaded with ``pip download --platform``. Each Python gets a ``requirements-<tag>.txt`` with
   the sha256 of every file, for ``pip install --require-hashes``.
2. **Tokenizers** the yamls name (``EleutherAI/gpt-neox-20b``), fetched from the hub and saved as
   folders when it is reachable; ``--tokenizer DIR`` adds a local one and makes it the default.
3. **C4** files, optional: local ones (``--c4-input``) or the first N training files from the hub
   (``--c4-files N``).
4. **Container**: the image as a docker archive when a Docker engine has it, and the enroot
   ``.sqsh`` when ``make sqsh`` wrote one. And the suite itself, ``suite.tar`` (``git archive HEAD``).
5. **Manifest**: ``bundle.json`` and ``SHA256SUMS`` (`test_case.bundle.manifest`); ``--tarball``
   also writes ``DIR.tar`` beside the folder.

What was asked for and could not be fetched is listed in the manifest's ``skipped`` and printed; the
bundle is still written. Needs the suite's venv (packaging, transformers) and a network.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from test_case import REPO_ROOT
from test_case.bundle.manifest import BundleError, BundleManifest, hash_files, write_manifest

HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
IMAGE_PYTHON = (3, 12)  # the container's Python (the base image's)
# what the base image ships and the Dockerfile leaves out of the image's constraints (same pattern)
IMAGE_SHIPS = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+)$")
# platform tags the image's wheels may carry: glibc 2.28 and older, x86_64
IMAGE_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
C4_HUB_FILES = "en/c4-train.{i:05d}-of-01024.json.gz"
C4_HUB_VALIDATION = "en/c4-validation.00000-of-00008.json.gz"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line of a lock."""

    name: str  # canonical (PEP 503)
    version: Version

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class BuildRequest:
    """What ``make bundle`` was asked for (the Makefile's variables, as `test_case.bundle.cli` parses them)."""

    out: Path
    lock: Path = REPO_ROOT / "constraints.txt"
    tools: list[str] = field(default_factory=lambda: ["pip==25.3"])
    image_lock: Path | None = None  # constraints-py312.txt with --image-wheels
    tokenizer_names: list[str] = field(default_factory=list)  # hub names; default: the yamls'
    local_tokenizer: Path | None = None
    hub: bool = True
    c4_input: list[Path] = field(default_factory=list)
    c4_files: int = 0
    image_tag: str | None = None
    sqsh: Path | None = None
    tarball: bool = False


def read_pins(lock: Path) -> list[Pin]:
    """The ``name==version`` lines of a lock file (comments, options and blank lines skipped)."""
    pins = []
    for line in lock.read_text().splitlines():
        if m := _PIN.match(line.strip()):
            pins.append(Pin(canonicalize_name(m.group(1)), Version(m.group(2))))
    if not pins:
        raise BundleError(f"{lock}: no name==version line: regenerate it with `make lock`")
    return pins


def yaml_tokenizers(yamls: Iterable[Path]) -> list[str]:
    """Hub tokenizer names the yamls use (``variables.tokenizer_name``), local folders left out."""
    names = set()
    for path in yamls:
        match = re.search(r"^\s*tokenizer_name:\s*([^\s#]+)", path.read_text(), re.MULTILINE)
        if match and not match.group(1).startswith((".", "/", "$", "~")) and match.group(1).count("/") == 1:
            names.add(match.group(1))
    return sorted(names)


def host_tag() -> str:
    """This Python's tag for wheelsets: ``cp311``."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def image_tags() -> set[Tag]:
    """The tags a wheel must carry to install into the image's Python."""
    return set(cpython_tags(IMAGE_PYTHON, [f"cp{IMAGE_PYTHON[0]}{IMAGE_PYTHON[1]}"], IMAGE_PLATFORMS)) | set(
        compatible_tags(IMAGE_PYTHON, f"cp{IMAGE_PYTHON[0]}{IMAGE_PYTHON[1]}", IMAGE_PLATFORMS)
    )


def _wheels_by_release(wheels: Path, tags: set[Tag] | None = None) -> dict[tuple[str, Version], list[Path]]:
    """The wheels in ``wheels`` by (name, version), only those carrying one of ``tags`` when given."""
    by_release: dict[tuple[str, Version], list[Path]] = {}
    for path in sorted(wheels.glob("*.whl")):
        name, version, _build, wheel_tags = parse_wheel_filename(path.name)
        if tags is None or wheel_tags & tags:
            by_release.setdefault((str(name), version), []).append(path)
    return by_release


def wheels_for(pins: Sequence[Pin], wheels: Path, tags: set[Tag]) -> tuple[dict[Pin, list[Path]], list[Pin]]:
    """Per pin, the wheels in ``wheels`` that install it under ``tags``; and the pins with none."""
    found: dict[Pin, list[Path]] = {}
    by_release = _wheels_by_release(wheels, tags)
    missing = []
    for pin in pins:
        if files := by_release.get((pin.name, pin.version)):
            found[pin] = files
        else:
            missing.append(pin)
    return found, missing


def release_files(pins: Iterable[Pin], wheels: Path) -> dict[Pin, list[Path]]:
    """Per pin, every wheel of that release in ``wheels``, whatever its tags.

    pip picks the best file for the machine it runs on, which may not be the one a set was built for
    (bcrypt's ``manylinux_2_34`` wheel, fetched for this host, beats the ``manylinux_2_28`` one in a
    Python 3.12 with glibc 2.35): a requirement lists the hash of each, so any choice checks.
    """
    by_release = _wheels_by_release(wheels)
    return {pin: by_release.get((pin.name, pin.version), []) for pin in pins}


def requirements_text(found: dict[Pin, list[Path]], hashes: dict[str, str]) -> str:
    """``name==version --hash=sha256:...`` per pin, for ``pip install --require-hashes``."""
    lines = ["# Written by `make bundle`: every release with the sha256 of its wheels (pip --require-hashes)."]
    for pin in sorted(found, key=lambda p: p.name):
        digests = " ".join(f"--hash=sha256:{hashes[p.name]}" for p in found[pin])
        lines.append(f"{pin} {digests}")
    return "\n".join(lines) + "\n"


def _run(args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(args), flush=True)
    result = subprocess.run(args, env=env, check=False)
    if result.returncode != 0:
        raise BundleError(f"`{' '.join(args[:4])} ...` failed (exit code {result.returncode}): see its output above")


def _pin_file(pins: Iterable[Pin | str], folder: Path) -> Path:
    path = folder / "pins.txt"
    path.write_text("".join(f"{p}\n" for p in pins))
    return path


def _online_env() -> dict[str, str]:
    """This environment with the hub switched back on (the Makefile switches it off for everything)."""
    return {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}


def build_host_wheels(req: BuildRequest, wheels: Path, scratch: Path) -> tuple[list[Pin], dict[Pin, list[Path]]]:
    """``pip wheel`` every pin of the lock and the tools for this Python; the pins and their wheels."""
    pins = read_pins(req.lock) + [Pin(canonicalize_name(n), Version(v)) for n, v in (t.split("==") for t in req.tools)]
    pins = list({p.name: p for p in pins}.values())  # a tool the lock pins too: the lock's last word
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(wheels),
            "-r",
            str(_pin_file(pins, scratch)),
        ]
    )
    found, missing = wheels_for(pins, wheels, set(sys_tags()))
    if missing:
        raise BundleError(f"pip wrote no wheel for {', '.join(map(str, missing))} in {wheels}")
    return pins, found


def download_image_wheels(image_lock: Path, wheels: Path, scratch: Path) -> dict[Pin, list[Path]]:
    """The image's Python: binary wheels by ``pip download --platform``; pure ones built above are shared."""
    pins = [p for p in read_pins(image_lock) if not IMAGE_SHIPS.match(p.name)]
    tags = image_tags()
    _have, to_fetch = wheels_for(pins, wheels, tags)
    if to_fetch:
        py = f"{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}"
        abi = f"cp{IMAGE_PYTHON[0]}{IMAGE_PYTHON[1]}"
        platform_args = [arg for plat in IMAGE_PLATFORMS for arg in ("--platform", plat)]
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        target = ["--python-version", py, "--implementation", "cp", "--abi", abi, *platform_args]
        _run([*pip, *target, "-d", str(wheels), "-r", str(_pin_file(to_fetch, scratch))])
    found, missing = wheels_for(pins, wheels, tags)
    if missing:
        raise BundleError(
            f"no wheel for the image's Python {IMAGE_PYTHON} of: {', '.join(map(str, missing))} "
            "(published only as source and of another version than the host's lock)"
        )
    return found


def save_hub_tokenizer(name: str, dest: Path) -> str | None:
    """Fetch tokenizer ``name`` from the hub into ``dest``; None, or why it was skipped."""
    code = (
        "import sys\nfrom transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\ntok.save_pretrained(sys.argv[2])\n"
        "print(f'{sys.argv[1]}: {len(tok):,} tokens saved to {sys.argv[2]}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, name, str(dest)], env=_online_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"tokenizer {name}: the hub is not reachable or refused it ({last[:200]}); pass TOKENIZER=DIR"
    print(result.stdout.strip())
    return None


def copy_local_tokenizer(source: Path, tokenizers: Path) -> str:
    """Copy a tokenizer folder into the bundle; its folder name is its name in the bundle."""
    if not ((source / "tokenizer.json").is_file() or (source / "tokenizer_config.json").is_file()):
        raise BundleError(
            f"TOKENIZER={source}: no tokenizer.json or tokenizer_config.json there: "
            "give a folder written by a tokenizer's save_pretrained"
        )
    dest = tokenizers / source.name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest)
    print(f"tokenizer {source.name}: copied from {source}")
    return source.name


def copy_c4(sources: Sequence[Path], dest: Path) -> int:
    """Copy C4 ``.json.gz``/``.json``/``.jsonl`` files (or the folders holding them); how many."""
    files = [f for s in sources for f in (sorted(s.iterdir()) if s.is_dir() else [s])]
    files = [f for f in files if f.name.endswith((".json.gz", ".json", ".jsonl"))]
    if not files:
        raise BundleError(f"C4_INPUT={' '.join(map(str, sources))}: no .json.gz, .json or .jsonl file there")
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dest / f.name)
    return len(files)


def fetch_c4(count: int, dest: Path) -> str | None:
    """The first ``count`` C4 training files and one validation file from the hub; None, or why not."""
    names = [C4_HUB_FILES.format(i=i) for i in range(count)] + [C4_HUB_VALIDATION]
    code = (
        "import shutil, sys\nfrom pathlib import Path\nfrom huggingface_hub import hf_hub_download\n"
        "for name in sys.argv[2:]:\n"
        "    path = hf_hub_download('allenai/c4', name, repo_type='dataset')\n"
        "    shutil.copy(path, Path(sys.argv[1]) / Path(name).name)\n    print('c4:', name)\n"
    )
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", code, str(dest), *names], env=_online_env(), capture_output=True, text=True, check=False
    )
    print(result.stdout.strip())
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"C4 files from the hub: {last[:200]}; pass C4_INPUT=DIR with local files"
    return None


def save_container(image_tag: str | None, sqsh: Path | None, dest: Path) -> tuple[list[Path], list[str]]:
    """The image as a docker archive (when an engine has it) and the ``.sqsh``; the files and what was skipped."""
    files, skipped = [], []
    if image_tag:
        docker = shutil.which("docker")
        have = docker and subprocess.run([docker, "image", "inspect", image_tag], capture_output=True).returncode == 0
        if docker and have:
            dest.mkdir(parents=True, exist_ok=True)
            archive = dest / (re.sub(r"[^A-Za-z0-9_.-]", "_", image_tag) + ".docker.tar")
            _run([docker, "save", "-o", str(archive), image_tag])
            files.append(archive)
        else:
            why = "no docker command" if not docker else "no Docker engine has it (docker image inspect failed)"
            skipped.append(f"container image {image_tag}: {why}; build it with `make image` where Docker runs")
    if sqsh and sqsh.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sqsh, dest / sqsh.name)
        files.append(dest / sqsh.name)
    elif sqsh:
        skipped.append(f"enroot image {sqsh}: not there (`make sqsh` writes it)")
    return files, skipped


def save_suite(dest: Path) -> str | None:
    """The suite itself, as committed (``git archive HEAD``), to unpack on the cluster; None, or why not."""
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "--prefix=mpt-slurm-bench/", "-o", str(dest), "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        dest.unlink(missing_ok=True)
        return f"suite.tar: not a git checkout ({result.stderr.strip()[:200]}); copy the repository yourself"
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    note = " (HEAD: the working tree has uncommitted changes, not in it)" if dirty.stdout.strip() else ""
    print(f"suite: {dest.name}, the repository at HEAD{note}")
    return None


def _suite_version() -> str:
    match = re.search(r'^version = "(.*)"', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    return match.group(1) if match else "unknown"


def _platform() -> str:
    libc, libc_version = platform.libc_ver()
    return (
        f"{sys.platform} {platform.machine()} ({libc} {libc_version})"
        if libc
        else f"{sys.platform} {platform.machine()}"
    )


def build_bundle(req: BuildRequest) -> BundleManifest:
    """Make the bundle ``req`` asks for; return its manifest (also written to the folder)."""
    started = time.monotonic()
    out = req.out.resolve()
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for part in ("tokenizers", "c4", "container"):  # what this run asks for, nothing left from an earlier one
        shutil.rmtree(out / part, ignore_errors=True)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"[1/5] wheels for this Python ({host_tag()}) from {req.lock.name}", flush=True)
        _pins, host = build_host_wheels(req, wheels, Path(tmp))
        wheelsets = {host_tag(): host}
        if req.image_lock is not None:
            print(f"[1/5] wheels for the image's Python {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]} from {req.image_lock.name}")
            wheelsets[f"cp{IMAGE_PYTHON[0]}{IMAGE_PYTHON[1]}"] = download_image_wheels(
                req.image_lock, wheels, Path(tmp)
            )
    used = {p for files in wheelsets.values() for paths in files.values() for p in paths}
    for stale in set(wheels.glob("*.whl")) - used:  # a wheel of an older lock: not installed, not shipped
        stale.unlink()
    hashes = {f.path.removeprefix("wheels/"): f.sha256 for f in hash_files(out) if f.path.startswith("wheels/")}
    requirement_files = {}
    for tag, found in wheelsets.items():
        name = f"requirements-{tag}.txt"
        (out / name).write_text(requirements_text(release_files(found, wheels), hashes))
        requirement_files[tag] = name

    print("[2/5] tokenizers", flush=True)
    tokenizers_dir = out / "tokenizers"
    tokenizers: dict[str, str] = {}
    names = req.tokenizer_names or yaml_tokenizers(sorted((REPO_ROOT / "yamls").glob("*.yaml")))
    for name in names:
        dest = tokenizers_dir / name
        if not req.hub:
            skipped.append(f"tokenizer {name}: the hub was not asked (HUB=0); pass TOKENIZER=DIR")
        elif (why := save_hub_tokenizer(name, dest)) is not None:
            skipped.append(why)
        else:
            tokenizers[name] = dest.relative_to(out).as_posix()
    default = next(iter(tokenizers), None)
    if req.local_tokenizer is not None:
        default = copy_local_tokenizer(req.local_tokenizer, tokenizers_dir)
        tokenizers[default] = (tokenizers_dir / default).relative_to(out).as_posix()

    print("[3/5] C4 files", flush=True)
    c4: str | None = None
    if req.c4_input:
        print(f"c4: {copy_c4(req.c4_input, out / 'c4')} file(s) copied")
        c4 = "c4"
    elif req.c4_files > 0:
        if not req.hub:
            skipped.append("C4 files from the hub: the hub was not asked (HUB=0)")
        elif (why := fetch_c4(req.c4_files, out / "c4")) is not None:
            skipped.append(why)
        else:
            c4 = "c4"

    print("[4/5] container", flush=True)
    container, container_skipped = save_container(req.image_tag, req.sqsh, out / "container")
    skipped += container_skipped

    suite = save_suite(out / "suite.tar")
    if suite is not None:
        skipped.append(suite)

    print("[5/5] manifest: the sha256 of every file", flush=True)
    manifest = BundleManifest(
        suite_version=_suite_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        platform=_platform(),
        wheelsets=requirement_files,
        tokenizers=tokenizers,
        default_tokenizer=default,
        c4=c4,
        container=[p.relative_to(out).as_posix() for p in container],
        skipped=skipped,
        files=hash_files(out),
    )
    write_manifest(out, manifest)
    if req.tarball:
        with tarfile.open(out.with_name(out.name + ".tar"), "w") as tar:
            tar.add(out, arcname=out.name)
    size = sum(f.bytes for f in manifest.files)
    wheel_count = sum(1 for f in manifest.files if f.path.startswith("wheels/"))
    print(
        f"bundle {out}: {size / 1e9:.2f} GB, {len(manifest.files)} files ({wheel_count} wheels for "
        f"{', '.join(requirement_files)}), tokenizers: {', '.join(tokenizers) or 'none'}, "
        f"C4: {c4 or 'none'}, container: {', '.join(manifest.container) or 'none'}; "
        f"{time.monotonic() - started:.0f} s"
    )
    for line in skipped:
        print(f"skipped: {line}")
    return manifest
