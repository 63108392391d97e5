"""Shared fixtures and the suite's plumbing: offline environment, the demo's C4 sample and tokenizer,
an MDS dataset built from them, the one local Slurm cluster of a session, the Slurm jobs that run in
the background from the session's start, the order of the modules, each module's area marker, and
the per-test durations every run records (tests/durations.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.durations import Recorder, durations_file
from tests.local_slurm import LocalSlurmCluster, session_cluster

if TYPE_CHECKING:
    from tests.fault_scenario import FaultScenario

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

# `make check` (TEST_TIER=check) is the quick tier: the tests not marked slow, with fewer
# hypothesis examples; `make test` runs everything with the full number.
QUICK_TIER = os.environ.get("TEST_TIER") == "check"


# Each test module's areas, as pytest markers: `pytest -m preprocessing` runs what a change to
# preprocessing/ can break (docs/contributing.md, "Development" has the "changed X, run Y" table). Every module is
# listed: a new one that is not stops the collection. `slow` and `slurm` stay in the modules.
AREAS: dict[str, tuple[str, ...]] = {
    "test_acceptance": ("acceptance", "report"),
    "test_acceptance_slurm": ("acceptance", "report"),
    "test_bundle": ("bundle",),
    "test_checkpoints": ("training",),
    "test_container": ("container",),
    "test_demo_assets": ("preprocessing",),
    "test_docs": ("tooling",),
    "test_durations": ("tooling",),
    "test_fault_tolerance_slurm": ("training", "report"),
    "test_gpu_smoke": ("training", "preflight"),
    "test_gpus": ("training", "preflight"),
    "test_habits": ("tooling",),
    "test_group_testing": ("preflight",),
    "test_health": ("preflight",),
    "test_health_clocks": ("preflight",),
    "test_health_links": ("preflight",),
    "test_health_slurm": ("preflight",),
    "test_health_xid": ("preflight",),
    "test_history": ("history", "report", "preflight"),
    "test_image_build": ("container",),
    "test_job_lines": ("training", "report"),
    "test_launch": ("training",),
    "test_local_slurm": ("tooling",),
    "test_log_parser": ("report",),
    "test_log_reading_paths": ("report",),
    "test_mds": ("preprocessing",),
    "test_memory_fit": ("training", "acceptance"),
    "test_metrics_and_report": ("report",),
    "test_mixture": ("training", "preprocessing"),
    "test_mixture_slurm": ("training", "preprocessing", "report"),
    "test_nccl_network": ("preflight",),
    "test_nccl_tests": ("preflight",),
    "test_preflight": ("preflight",),
    "test_preflight_numerics": ("preflight",),
    "test_preflight_slurm": ("preflight",),
    "test_preprocessing": ("preprocessing",),
    "test_preprocessing_domains": ("preprocessing",),
    "test_preprocessing_formats": ("preprocessing",),
    "test_preprocessing_resume": ("preprocessing",),
    "test_preprocessing_splits": ("preprocessing", "training", "report"),
    "test_preprocessing_tokenizer": ("preprocessing",),
    "test_rank_timing": ("training", "report"),
    "test_report_liveness": ("report",),
    "test_restarts": ("training", "report"),
    "test_settings": ("tooling",),
    "test_shm_cleanup": ("training",),
    "test_slurm_integration": ("training", "preprocessing", "report"),
    "test_training_local": ("training", "report"),
    "test_writer_lock": ("preprocessing",),
    "test_yamls": ("training",),
}


def pytest_configure(config: pytest.Config) -> None:
    """Every run records its tests' durations (tests/durations.py)."""
    if not config.pluginmanager.has_plugin("durations"):
        config.pluginmanager.register(Recorder(durations_file()), "durations")


# The module whose Slurm jobs run in the background from the session's start (`background`).
BACKGROUND_MODULE = "test_fault_tolerance_slurm"


def run_order(item: pytest.Item) -> int:
    """Where a test's module runs: the modules that need no cluster first, the quick ones (one core,
    mostly) before those with a slow test (training: both cores): they compute while the background
    jobs wait; then the module of the background jobs (it reads their results); then the other Slurm
    modules, alone on the cluster (their timing is judged). A module's group is the latest of its
    tests' (a module is never split: its fixtures are made once); files and tests keep their order."""
    if Path(str(item.fspath)).stem == BACKGROUND_MODULE:
        return 2
    if item.get_closest_marker("slurm"):
        return 3
    return 1 if item.get_closest_marker("slow") else 0


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its module's areas (`AREAS`); order the modules (`run_order`)."""
    for item in items:
        module = Path(str(item.fspath)).stem
        if module not in AREAS:
            raise pytest.UsageError(f"tests/conftest.py: {module} has no entry in AREAS: add its areas there")
        for area in AREAS[module]:
            item.add_marker(area)
    group: dict[str, int] = {}
    for item in items:
        group[str(item.fspath)] = max(group.get(str(item.fspath), 0), run_order(item))
    items.sort(key=lambda item: group[str(item.fspath)])  # stable: files and tests keep their order


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """The session's one local Slurm cluster (tests/local_slurm.py): 8 nodes, partitions ``debug``
    (node1-2, the default), ``three`` (node1-3), ``five`` (node1-5), ``spare`` (node6-8) and ``all``;
    reused, and left running, when ``python -m tests.local_slurm up`` started it."""
    yield from session_cluster()


@pytest.fixture(scope="session", autouse=True)
def background(request: pytest.FixtureRequest) -> Iterator[FaultScenario | Exception | None]:
    """The jobs of tests/test_fault_tolerance_slurm.py (tests/fault_scenario.py), started before the
    first test when any of that module's tests is selected: they mostly wait (a requeue gap, gloo's
    timeout, Slurm noticing a dead slurmd), so they run while the modules that need no cluster compute.
    What kept them from starting (the cluster, the data) is handed to that module's tests, not raised
    here: the other tests run on. Cancelled at the end of a session that stopped before reading them."""
    wanted = any(Path(str(item.fspath)).stem == BACKGROUND_MODULE for item in request.session.items)
    if not wanted or os.geteuid() != 0:  # without root that module's tests skip (`session_cluster`)
        yield None
        return
    from tests.fault_scenario import FaultScenario

    try:
        slurm: LocalSlurmCluster = request.getfixturevalue("slurm_cluster")
        data: Path = request.getfixturevalue("mds_root")
        assets: tuple[Path, Path] = request.getfixturevalue("demo_assets")
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        slurm.settle()
        scenario = FaultScenario(slurm, data, assets[1], factory.mktemp("faults")).start()
    except Exception as err:  # the cluster or the data: raised again by the fault module's tests
        yield err
        return
    yield scenario
    scenario.cancel()


@pytest.fixture(scope="module")
def cluster(
    slurm_cluster: LocalSlurmCluster, background: FaultScenario | Exception | None
) -> Iterator[LocalSlurmCluster]:
    """The session's cluster for one Slurm module, alone: the background jobs ended, no job left and
    every node idle before the module and after it (a fault a module did not undo fails here, not in
    the next module)."""
    if background is not None and not isinstance(background, Exception):
        background.join()
    slurm_cluster.settle()
    yield slurm_cluster
    slurm_cluster.settle()


def decompress_shards(root: Path) -> int:
    """Every zstd shard under ``root`` decompressed beside itself (``shard.N.mds``, what streaming
    writes on a shard's first read), once, before jobs that start together read it: each job
    decompresses in place under the same ``.tmp`` name, and one of two jobs that start together on a
    fresh dataset can fail on the rename (seen: ``FileNotFoundError: .../shard.00000.mds.tmp ->
    .../shard.00000.mds``; a requeue then finds the shard). The number of shards decompressed."""
    import zstd

    count = 0
    for index in sorted(root.rglob("index.json")):
        for shard in json.loads(index.read_text())["shards"]:
            zipped, raw = shard.get("zip_data"), index.parent / shard["raw_data"]["basename"]
            if zipped and not raw.exists():
                tmp = raw.with_name(f"{raw.name}.{os.getpid()}.tmp")
                tmp.write_bytes(zstd.decompress((index.parent / zipped["basename"]).read_bytes()))
                os.replace(tmp, raw)
                count += 1
    return count


def examples(full: int) -> int:
    """Hypothesis examples for a property test that runs ``full`` in `make test`."""
    return max(20, full // 8) if QUICK_TIER else full


def preprocess_args(
    inputs: Path | None, out_root: Path, split: str, tokenizer: Path, concat_tokens: int, *extra: str
) -> list[str]:
    """Command line of ``python -m preprocessing`` (``inputs=None``: the hub)."""
    head = [] if inputs is None else ["--input", str(inputs)]
    return [
        *head,
        "--out-root",
        str(out_root),
        "--split",
        split,
        "--tokenizer",
        str(tokenizer),
        "--concat-tokens",
        str(concat_tokens),
        *extra,
    ]


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(C4 sample folder, tokenizer folder), made once per session."""
    from test_case.demo.assets import make_demo_assets

    return make_demo_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def mds_root(demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_small and val_small converted with the real CLI (128 tokens per sample)."""
    from preprocessing.cli import main

    sample, tokenizer = demo_assets
    root = tmp_path_factory.mktemp("mds")
    for split in ("train_small", "val_small"):
        args = preprocess_args(sample, root, split, tokenizer, 128, "--eos-text", "<|endoftext|>")
        assert main(args) == 0
    return root


DOMAINS = ("RedPajamaC4", "RedPajamaWikipedia")  # two of SlimPajama's meta.redpajama_set_name values


def write_domain_sample(sample: Path, folder: Path) -> None:
    """The demo's C4 sample as SlimPajama-shaped files: ``train/chunk1/example_train_{0,1}.jsonl.zst``
    and ``validation/chunk1/example_val_0.jsonl.zst``, records ``{"text", "meta": {"redpajama_set_name"}}``,
    3 documents in 10 Wikipedia's, the others C4's."""
    import gzip

    import zstandard

    for split, prefix, files in (("train", "c4-train.", 2), ("validation", "c4-validation.", 1)):
        texts = []
        for path in sorted(sample.glob(f"{prefix}*.json.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                texts += [json.loads(line)["text"] for line in fh]
        lines = [
            json.dumps({"text": t, "meta": {"redpajama_set_name": DOMAINS[1] if i % 10 < 3 else DOMAINS[0]}}) + "\n"
            for i, t in enumerate(texts)
        ]
        chunk = folder / split / "chunk1"
        chunk.mkdir(parents=True)
        short = "train" if split == "train" else "val"
        for n in range(files):
            data = zstandard.ZstdCompressor().compress("".join(lines[n::files]).encode())
            (chunk / f"example_{short}_{n}.jsonl.zst").write_bytes(data)
