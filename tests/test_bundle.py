"""The air-gapped bundle: its manifest and hash checks, the wheel sets, env.sh with BUNDLE set; and
the proofs, each inside a network namespace with no network at all (`unshare -n`, loopback only):

- every run (`make test`): a bundle of a small lock (three of the lock's wheels and pip), built by the
  same `python -m test_case.bundle build`, installs a stand-in project into a fresh venv through the
  same `python -m test_case.bundle install` (the manifest's sha256, pip with no index and
  `--require-hashes`, the editable install, `pip check`), and an altered wheel is refused by the
  suite's check and by pip's;
- `make test-airgap` (marker ``airgap``; `.ci/run` runs it after `make test`): the real bundle of the
  whole lock (3.5 GB of wheels) installs the suite into a fresh venv (4.6 GB) and runs the demo, the
  preprocessing and the preflight, about 6 minutes here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.tags import sys_tags

from test_case.bundle.build import (
    image_tags,
    read_pins,
    release_files,
    requirements_text,
    wheels_for,
    yaml_tokenizers,
)
from test_case.bundle.cli import main as bundle_main
from test_case.bundle.manifest import (
    BundleError,
    BundleManifest,
    hash_files,
    read_manifest,
    verify_bundle,
    write_manifest,
)
from tests.conftest import REPO_ROOT


def small_bundle(root: Path, tokenizer: Path | None = None) -> Path:
    """A bundle folder with two files and a tokenizer, and its manifest (no wheels: not installable)."""
    bundle = root / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"not really a wheel")
    (bundle / "requirements-cp311.txt").write_text("six==1.17.0 --hash=sha256:00\n")
    tokenizers = {}
    if tokenizer is not None:
        shutil.copytree(tokenizer, bundle / "tokenizers" / "demo")
        tokenizers = {"demo": "tokenizers/demo"}
    (bundle / "c4").mkdir()
    (bundle / "c4" / "c4-validation.00000-of-00008.json.gz").write_bytes(b"x")
    if tokenizer is not None:  # and an enroot image (no real one: env.sh only finds it)
        (bundle / "container").mkdir()
        (bundle / "container" / "llm-foundry.sqsh").write_bytes(b"hsqs")
    manifest = BundleManifest(
        suite_version="0.1.0",
        created="2026-12-01T00:00:00+00:00",
        platform="linux x86_64",
        wheelsets={"cp311": "requirements-cp311.txt"},
        tokenizers=tokenizers,
        default_tokenizer="demo" if tokenizers else None,
        c4="c4",
        container=[],
        skipped=[],
        files=hash_files(bundle),
    )
    write_manifest(bundle, manifest)
    return bundle


def test_the_manifest_reads_back_and_names_every_missing_cut_or_altered_file(tmp_path: Path) -> None:
    bundle = small_bundle(tmp_path)
    manifest = read_manifest(bundle)
    assert [f.path for f in manifest.files] == [
        "c4/c4-validation.00000-of-00008.json.gz",
        "requirements-cp311.txt",
        "wheels/six-1.17.0-py2.py3-none-any.whl",
    ]
    assert verify_bundle(bundle, manifest) == []
    sums = (bundle / "SHA256SUMS").read_text().splitlines()
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert check.returncode == 0 and len(sums) == 3, check.stdout + check.stderr  # the standard tool agrees

    wheel = bundle / "wheels" / "six-1.17.0-py2.py3-none-any.whl"
    wheel.write_bytes(b"NOT really a wheel")  # same size, other bytes
    (bundle / "requirements-cp311.txt").write_text("cut")
    (bundle / "c4" / "c4-validation.00000-of-00008.json.gz").unlink()
    problems = verify_bundle(bundle, manifest)
    assert len(problems) == 3
    assert "c4-validation.00000-of-00008.json.gz: missing" in problems[0]
    assert "requirements-cp311.txt: 3 bytes, the manifest says 29: altered or cut short" in problems[1]
    assert f"{wheel}: sha256 " in problems[2] and problems[2].endswith("altered")

    code = bundle_main(["install", str(bundle), "--python", sys.executable])  # stops before pip runs
    assert code == 1
    assert bundle_main(["verify", str(bundle)]) == 1
    (bundle / "bundle.json").write_text('{"format": 99}')
    with pytest.raises(BundleError, match="bundle format 99, this suite reads format 1"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match=r"holds no bundle\.json: point BUNDLE at the folder"):
        read_manifest(tmp_path)


def test_wheel_sets_pick_the_wheels_each_python_can_install_and_pin_their_hashes(tmp_path: Path) -> None:
    pins = read_pins(REPO_ROOT / "constraints.txt")
    by_name = {p.name: p for p in pins}
    assert len(pins) > 200 and str(by_name["torch"]) == "torch==2.7.0"
    assert str(by_name["antlr4-python3-runtime"]) == "antlr4-python3-runtime==4.9.3"  # only an sdist on PyPI
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    numpy = by_name["numpy"].version
    names = [
        "torch-2.7.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.7.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "antlr4_python3_runtime-4.9.3-py3-none-any.whl",
        f"numpy-{numpy}-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "numpy-0.1.0-cp311-cp311-manylinux_2_17_x86_64.whl",  # not the pinned release: never picked
    ]
    for name in names:
        (wheels / name).write_bytes(b"")
    wanted = [by_name["torch"], by_name["antlr4-python3-runtime"], by_name["numpy"]]
    host, host_missing = wheels_for(wanted, wheels, set(sys_tags()))
    image, image_missing = wheels_for(wanted, wheels, image_tags())
    assert {str(p): [f.name for f in fs] for p, fs in host.items()} == {
        "torch==2.7.0": [names[0]],
        "antlr4-python3-runtime==4.9.3": [names[2]],
        f"numpy=={numpy}": [names[3]],
    } and host_missing == []
    assert [f.name for f in image[by_name["torch"]]] == [names[1]]  # cp312 for the image, the pure one shared
    assert [f.name for f in image[by_name["antlr4-python3-runtime"]]] == [names[2]]
    assert [str(p) for p in image_missing] == [str(by_name["numpy"])]
    hashes = {name: f"{i:064x}" for i, name in enumerate(names)}
    text = requirements_text(release_files(host, wheels), hashes)
    # every wheel of the release: pip may pick another file than the one a set was made for
    assert f"torch==2.7.0 --hash=sha256:{0:064x} --hash=sha256:{1:064x}" in text.splitlines()
    assert f"antlr4-python3-runtime==4.9.3 --hash=sha256:{2:064x}" in text.splitlines()
    assert yaml_tokenizers(sorted((REPO_ROOT / "yamls").glob("*.yaml"))) == ["EleutherAI/gpt-neox-20b"]


def source_env_sh(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Source env.sh as the scripts do and print what it set."""
    script = (
        f'ROOT={REPO_ROOT}; SCRIPT=t; source "$ROOT/slurm-scripts/env.sh"; '
        'echo "TOKENIZER=$TOKENIZER C4_INPUT=${C4_INPUT:-} IMAGE=$IMAGE '
        'HUB=$HF_HUB_OFFLINE$TRANSFORMERS_OFFLINE$HF_DATASETS_OFFLINE"'
    )
    clean = {k: v for k, v in env.items() if k not in ("TOKENIZER", "C4_INPUT", "IMAGE", "HF_HUB_OFFLINE")}
    return subprocess.run(["bash", "-c", script], env=clean, capture_output=True, text=True, timeout=60)


def test_env_sh_with_a_bundle_turns_the_hub_off_and_defaults_to_its_tokenizer_and_c4(
    tmp_path: Path, demo_assets: tuple[Path, Path]
) -> None:
    bundle = small_bundle(tmp_path, demo_assets[1])
    done = source_env_sh({**os.environ, "BUNDLE": str(bundle)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        f"TOKENIZER={bundle}/tokenizers/demo",
        f"C4_INPUT={bundle}/c4",
        f"IMAGE={bundle}/container/llm-foundry.sqsh",
        "HUB=111",
    ]
    chosen = subprocess.run(
        [
            "bash",
            "-c",
            f'ROOT={REPO_ROOT}; SCRIPT=t; TOKENIZER=/my/tok; source "$ROOT/slurm-scripts/env.sh"; echo "$TOKENIZER"',
        ],
        env={**os.environ, "BUNDLE": str(bundle)},
        capture_output=True,
        text=True,
    )
    assert chosen.stdout.strip() == "/my/tok"  # TOKENIZER set: it wins

    empty = small_bundle(tmp_path / "empty")  # no tokenizer in it
    failed = source_env_sh({**os.environ, "BUNDLE": str(empty)})
    assert failed.returncode == 2
    assert "no tokenizer (default) in the bundle (it holds: none)" in failed.stderr
    assert f"t: error: BUNDLE={empty}: no tokenizer to use" in failed.stderr
    nothing = source_env_sh({**os.environ, "BUNDLE": str(tmp_path)})
    assert nothing.returncode == 2 and "holds no bundle.json" in nothing.stderr

    make = subprocess.run(
        ["make", "-n", "install", f"BUNDLE={tmp_path}"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert make.returncode == 2 and f"BUNDLE={tmp_path} holds no bundle.json" in make.stderr


# ------------------------------------------------------------------ the proof, with no network at all


def copy_of_the_repository(dest: Path) -> Path:
    """The working tree's files (tracked and new, nothing ignored): a clone as a user has it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


def offline(script: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a new network namespace: no interface but its own loopback, brought up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "SLURM_"))}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if ".venv" not in p)
    return subprocess.run(
        ["unshare", "--net", "bash", "-euo", "pipefail", "-c", f"ip link set lo up\n{script}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_assets: tuple[Path, Path]) -> Iterator[tuple[Path, str]]:
    """``make bundle`` with the demo's tokenizer and C4 sample: (bundle folder, what it printed)."""
    sample, tokenizer = demo_assets
    bundle = tmp_path_factory.mktemp("airgap") / "bundle"
    made = subprocess.run(
        ["make", "bundle", f"BUNDLE={bundle}", f"TOKENIZER={tokenizer}", f"C4_INPUT={sample}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    yield bundle, made.stdout
    shutil.rmtree(bundle.parent, ignore_errors=True)  # several GB


# small pure wheels of the lock, at the lock's versions; setuptools builds the editable install, as
# the lock's own does for the suite (the venv's setuptools 65 cannot without `wheel`)
SMALL_LOCK = ("six", "idna", "setuptools")


@pytest.fixture(scope="module")
def small_built(tmp_path_factory: pytest.TempPathFactory, demo_assets: tuple[Path, Path]) -> Path:
    """A bundle of a small lock (SMALL_LOCK and pip), made by the same command as ``make bundle``
    (no hub; the demo's tokenizer and C4 sample): the mechanism in seconds, not the whole lock."""
    sample, tokenizer = demo_assets
    root = tmp_path_factory.mktemp("small-bundle")
    pins = {p.name: p for p in read_pins(REPO_ROOT / "constraints.txt")}
    (root / "lock.txt").write_text("".join(f"{pins[name]}\n" for name in SMALL_LOCK))
    bundle = root / "bundle"
    build = ["build", "--out", str(bundle), "--lock", str(root / "lock.txt"), "--tool", "pip==25.3", "--no-hub"]
    made = subprocess.run(
        [sys.executable, "-m", "test_case.bundle", *build, "--tokenizer", str(tokenizer), "--c4-input", str(sample)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return bundle


def stand_in_project(root: Path) -> Path:
    """A project that needs SMALL_LOCK, as the suite needs its lock: what the small bundle installs."""
    project = root / "airgap-probe"
    project.mkdir(parents=True)
    deps = ", ".join(f'"{name}"' for name in SMALL_LOCK[:2])
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "airgap-probe"\nversion = "0.1"\ndependencies = [{deps}]\n'
        '[tool.setuptools]\npy-modules = ["airgap_probe"]\n'
    )
    (project / "airgap_probe.py").write_text(
        "import idna, six\n\nprint('probe:', idna.encode('b\\u00fccher.example').decode(), six.__version__)\n"
    )
    return project


@pytest.mark.slow
def test_a_small_bundle_installs_a_project_with_no_network(small_built: Path, tmp_path: Path) -> None:
    manifest = read_manifest(small_built)
    assert verify_bundle(small_built, manifest) == []
    wheels = sorted(f.path for f in manifest.files if f.path.startswith("wheels/"))
    assert [w.split("/")[1].split("-")[0].lower() for w in wheels] == ["idna", "pip", "setuptools", "six"], wheels
    assert manifest.default_tokenizer == "tokenizer" and manifest.c4 == "c4"
    project, venv = stand_in_project(tmp_path), tmp_path / "venv"
    done = offline(
        f"""
python3 -c '
import socket
try:
    socket.create_connection(("151.101.0.223", 443), timeout=5)  # an address of PyPI
    raise SystemExit("network reachable")
except OSError as err:
    print(f"no network: {{err}}")
'
python3 -m venv {venv}
{venv}/bin/python -m test_case.bundle install {small_built} --project {project}
{venv}/bin/python -c 'import airgap_probe'
{venv}/bin/python -m pip --version
""",
        REPO_ROOT,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "no network: [Errno 101] Network is unreachable" in out
    assert "every sha256 as its manifest says" in out and "installed from the bundle, with no index" in out
    assert "--no-index --find-links" in out and "--require-hashes" in out
    pins = {p.name: p for p in read_pins(REPO_ROOT / "constraints.txt")}
    assert f"probe: xn--bcher-kva.example {pins['six'].version}" in done.stdout  # idna's encoding, the lock's six
    assert "pip 25.3 from" in done.stdout  # the bundle's pip replaced the venv's


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, removed after the test: a venv installed from the bundle takes 7 GB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.airgap
def test_a_bundle_installs_and_runs_the_demo_preprocessing_and_preflight_with_no_network(
    built: tuple[Path, str], scratch: Path
) -> None:
    bundle, printed = built
    manifest = read_manifest(bundle)
    assert set(manifest.wheelsets) == {f"cp{sys.version_info[0]}{sys.version_info[1]}"}
    assert manifest.tokenizers["tokenizer"] == "tokenizers/tokenizer" and manifest.default_tokenizer == "tokenizer"
    assert manifest.c4 == "c4" and any(f.path.startswith("wheels/torch-2.7.0-") for f in manifest.files)
    # the yamls' tokenizer was asked for: fetched where the hub answers, else said so (as on this machine)
    hub = "EleutherAI/gpt-neox-20b"
    assert (hub in manifest.tokenizers) != (f"skipped: tokenizer {hub}: the hub is not reachable" in printed)
    assert "bundle " in printed and " GB, " in printed
    with tarfile.open(bundle / "suite.tar") as suite:  # the repository itself, at HEAD
        assert {"mpt-slurm-bench/Makefile", "mpt-slurm-bench/slurm-scripts/env.sh"} <= set(suite.getnames())

    repo = copy_of_the_repository(scratch / "repo")
    venv, demo = scratch / "venv", scratch / "demo"
    done = offline(
        f"""
python3 - <<'EOF'
import socket
for host, port in (("151.101.0.223", 443), ("pypi.org", 443)):  # an address of PyPI's, and its name
    try:
        socket.create_connection((host, port), timeout=5)
        raise SystemExit(f"network reachable: {{host}}")
    except OSError as err:
        print(f"no network: {{host}}: {{err}}")
EOF
make install BUNDLE={bundle} VENV={venv}
make demo BUNDLE={bundle} VENV={venv} DEMO_DIR={demo}
BUNDLE={bundle} VENV={venv} DATA_ROOT={scratch}/from-bundle SPLITS=val_small CONCAT_TOKENS=128 WORKERS=1 \\
  bash slurm-scripts/1.c4-preprocess.sbatch
BUNDLE={bundle} VENV={venv} DATA_ROOT={demo}/data SAVE_ROOT={scratch}/ckpt LOG_DIR={scratch}/preflight \\
  PREFLIGHT_ARGS="--max-bytes 65536" bash slurm-scripts/0.preflight.sbatch || echo "preflight exit $?"
""",
        repo,
        timeout=1800,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "no network: 151.101.0.223: [Errno 101] Network is unreachable" in out
    assert "every sha256 as its manifest says" in out and "installed from the bundle, with no index" in out
    assert (venv / "lib").is_dir() and not (REPO_ROOT / ".venv").samefile(venv)
    # the demo, end to end to its report
    assert "final train loss" in done.stdout and "report.md" in done.stdout, out[-4000:]
    assert (repo / "logs").is_dir() and any((repo / "logs").glob("*.out"))
    # the preprocessing took the bundle's C4 files and tokenizer without being told
    assert (scratch / "from-bundle" / "val_small" / "index.json").is_file()
    written = json.loads((scratch / "from-bundle" / "val_small" / "dataset.json").read_text())
    assert written["options"]["tokenizer"] == f"{bundle}/tokenizers/tokenizer"
    assert [Path(path).parent for path, _ in written["inputs"]] == [bundle / "c4"]
    # the preflight loaded the bundle's tokenizer with the hub off
    (report,) = (scratch / "preflight").glob("preflight_*.json")
    ((_, node),) = json.loads(report.read_text())["nodes"].items()
    tokenizer_check = node["checks"]["tokenizer"]
    assert tokenizer_check["status"] == "pass", tokenizer_check
    assert f"{bundle}/tokenizers/tokenizer" in json.dumps(tokenizer_check)


@pytest.mark.slow
def test_an_altered_wheel_is_refused_by_the_suite_and_by_pip(small_built: Path, scratch: Path) -> None:
    bundle = small_built
    wheel = min((bundle / "wheels").glob("*.whl"), key=lambda p: p.stat().st_size)
    original = wheel.read_bytes()
    try:
        wheel.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of the last byte
        venv = scratch / "venv"
        refused = offline(f"make install BUNDLE={bundle} VENV={venv}", REPO_ROOT, timeout=600)
        assert refused.returncode != 0
        assert f"{wheel}: sha256 " in refused.stderr and "the manifest says" in refused.stderr, refused.stderr
        assert "copy the bundle again from the connected machine" in refused.stderr
        assert not (venv / ".installed").exists()
        # pip's own check, were the suite's skipped: the same wheel, its pinned hash, no index
        name = wheel.name.split("-")[0].replace("_", "-").lower()
        line = next(
            ln
            for ln in (bundle / "requirements-cp311.txt").read_text().splitlines()
            if ln.lower().startswith(name + "==")
        )
        (scratch / "one.txt").write_text(line + "\n")
        pip = offline(
            f"python3 -m venv {scratch}/v2 && PIP_CONFIG_FILE=/dev/null {scratch}/v2/bin/pip install --no-index "
            f"--find-links {bundle}/wheels --require-hashes -r {scratch}/one.txt",
            REPO_ROOT,
            timeout=600,
        )
        assert pip.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in pip.stderr, pip.stderr
    finally:
        wheel.write_bytes(original)
    assert verify_bundle(bundle, read_manifest(bundle)) == []
