"""Launch decisions derived from Slurm's environment: hosts, ranks, ports, processes, command line."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_case.report.log_lines import parse_composer_log
from test_case.training.config_check import batch_problem
from test_case.training.header import run_header
from test_case.training.launch import composer_command
from test_case.training.node_plan import (
    PORT_BASE,
    PORT_SPAN,
    LaunchError,
    NodePlan,
    count_gpus,
    expand_hostlist,
    master_port,
    plan_node,
)
from test_case.training.run_config import resolve_yaml, training_config
from test_case.training.start_checks import CHECKPOINT_BYTES_PER_PARAM, checkpoint_bytes, start_problems
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("gpu-st-p5-[01-02,07]", ["gpu-st-p5-01", "gpu-st-p5-02", "gpu-st-p5-07"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("ip-10-1-2-[9-11]", ["ip-10-1-2-9", "ip-10-1-2-10", "ip-10-1-2-11"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


def test_master_port_is_derived_from_job_id_and_below_ephemeral_range() -> None:
    assert master_port("12345") == 22345 == master_port("22345")
    assert all(20000 <= master_port(str(j)) < 30000 for j in range(0, 100000, 997))
    assert PORT_BASE <= master_port(None) < PORT_BASE + PORT_SPAN  # outside Slurm: free, still not ephemeral


SLURM_ENV = {
    "SLURM_JOB_ID": "4321",
    "SLURM_JOB_NAME": "mpt-train",
    "SLURM_JOB_NODELIST": "p5-[003-004]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_CPUS_ON_NODE": "192",
}


def test_plan_on_a_gpu_node() -> None:
    plan = plan_node(SLURM_ENV | {"SLURM_GPUS_ON_NODE": "8"})
    assert plan == NodePlan(
        job_id="4321",
        run_name="mpt-train-4321",
        node_rank=1,
        num_nodes=2,
        procs_per_node=8,
        gpus_per_node=8,
        master_addr="p5-003",
        master_port=24321,
        threads_per_proc=24,
    )
    assert plan.world_size == 16


def test_plan_on_a_cpu_node_and_outside_slurm() -> None:
    cpu = plan_node(SLURM_ENV | {"CPU_PROCS_PER_NODE": "2", "SLURM_CPUS_ON_NODE": "2"}, gpus=0)
    assert (cpu.procs_per_node, cpu.world_size, cpu.threads_per_proc, cpu.gpus_per_node) == (2, 4, 1, 0)
    local = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    assert (local.num_nodes, local.node_rank, local.master_addr, local.run_name) == (
        1,
        0,
        "127.0.0.1",
        "mpt-train-local-1",
    )
    with pytest.raises(LaunchError):
        plan_node(SLURM_ENV | {"SLURM_JOB_NODELIST": ""}, gpus=0)


def test_gpu_count_from_slurm_variables() -> None:
    assert count_gpus({"SLURM_GPUS_ON_NODE": "4"}) == 4
    assert count_gpus({"SLURM_GPUS_PER_NODE": "h100:8"}) == 8


def test_composer_command() -> None:
    plan = plan_node(SLURM_ENV | {"SLURM_GPUS_ON_NODE": "8"})
    env = {"DATA_ROOT": "/fsx/c4", "TOKENIZER": "EleutherAI/gpt-neox-20b"}
    cmd = composer_command(plan, resolve_yaml("mpt-tiny-cpu"), ["max_duration=10ba"], env)
    assert cmd[:11] == [
        "composer",
        "--nproc",
        "8",
        "--world_size",
        "16",
        "--node_rank",
        "1",
        "--master_addr",
        "p5-003",
        "--master_port",
        "24321",
    ]
    assert cmd[11:14] == ["-m", "test_case.training.foundry_train", str(REPO_ROOT / "yamls" / "mpt-tiny-cpu.yaml")]
    assert cmd[14:] == [
        "variables.run_name=mpt-train-4321",
        "variables.data_local=/fsx/c4",
        "variables.tokenizer_name=EleutherAI/gpt-neox-20b",
        "max_duration=10ba",
    ]


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(LaunchError, match=r"no yaml for model 'mpt-9000b'.*known: .*mpt-tiny-cpu"):
        resolve_yaml("mpt-9000b")


def test_run_header_round_trips_through_the_parser() -> None:
    plan = plan_node(SLURM_ENV | {"SLURM_GPUS_ON_NODE": "8"})
    header = run_header(plan, "mpt-7b", SLURM_ENV, ["max_duration=100ba"])
    lines = header.lines()
    assert lines[0] == "[run-header] job_id: 4321" and "[run-header] gpu_name: none" in lines  # no nvidia-smi here
    parsed = parse_composer_log(lines)
    assert parsed.header == header and parsed.starts == 1
    assert (header.world_size, header.backend, header.device, header.torch) == (16, "nccl", "gpu", "2.7.0")
    assert parsed.header_fields["world_size"] == "16" and parsed.run_name == header.run_name
    # the GPU stack it ran on: torch's CUDA (read without importing torch), the NCCL wheel, the driver
    pins = dict(line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().split() if "==" in line)
    assert (header.cuda, header.nccl, header.driver) == ("12.6", pins["nvidia-nccl-cu12"], None)  # no nvidia-smi here
    assert header.flash_attn == "not installed"


def test_torch_cuda_is_read_from_torchs_version_file(tmp_path: Path) -> None:
    from test_case.training.header import torch_cuda

    build = tmp_path / "version.py"
    build.write_text("__version__ = '2.7.0+cu128'\ncuda: Optional[str] = '12.8'\nhip: Optional[str] = None\n")
    assert torch_cuda(build) == "12.8"
    build.write_text("__version__ = '2.7.0+cpu'\ncuda: Optional[str] = None\n")
    assert torch_cuda(build) == "none"
    assert torch_cuda(tmp_path / "missing.py") == "unknown"


def test_header_cli_prints_parseable_lines() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", "header", "mpt-tiny-cpu"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    header = parse_composer_log(out.stdout.splitlines()).header
    assert (header.model, header.nodes, header.composer, header.device) == ("mpt-tiny-cpu", 1, "0.32.1", "cpu")


def _signal_file_names(node_rank: int, port: int, patched: bool, queue: Any) -> None:
    """One rank of a 2-node, 1-process-per-node gloo group, as Composer's launcher sets it up."""
    import os

    os.environ.update(
        {
            "RANK": str(node_rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "NODE_RANK": str(node_rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    import faulthandler
    from datetime import timedelta

    import torch.distributed as tdist
    from composer.utils import dist

    from test_case.training import foundry_train

    faulthandler.enable()  # a crash shows where, in the test's output
    faulthandler.dump_traceback_later(100, exit=True)  # and so does a hang
    tdist.init_process_group("gloo", timeout=timedelta(seconds=90))
    name_of = foundry_train.per_node_signal_file_name if patched else dist.get_node_signal_file_name
    name = name_of()
    # Neither rank tears the group down while the other is still in the broadcast: destroying it
    # early hung this test about once in ten runs (pytorch/pytorch#75097 describes the same).
    tdist.barrier()
    queue.put((node_rank, name))
    tdist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("patched", [False, True])
def test_signal_file_name_is_per_node_only_with_the_fix(patched: bool) -> None:
    """Composer broadcasts rank 0's name to every node (the race); the fix makes it per node."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = master_port(None)
    procs = [ctx.Process(target=_signal_file_names, args=(r, port, patched, queue)) for r in (0, 1)]
    try:
        for p in procs:
            p.start()
        names = dict(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:  # never leave a process behind when the test fails
            if p.is_alive():
                p.kill()
    assert names[0].startswith("._signal_file_node0_")
    if patched:
        assert names[0] != names[1] and names[0].endswith("_n0") and names[1].endswith("_n1")
        assert names[0].removesuffix("_n0") == names[1].removesuffix("_n1")
    else:
        assert names[0] == names[1]  # both nodes would create and delete one file on shared storage


def test_preflight_passes_with_data_tokenizer_and_save_folder(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1]), "SAVE_ROOT": str(tmp_path / "ck")}
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    yaml = resolve_yaml("mpt-tiny-cpu")
    assert start_problems(yaml, plan, training_config(yaml, plan, env), tmp_path) == []
    assert (tmp_path / "ck" / "mpt-train-local-1" / "checkpoints").is_dir()


def test_preflight_names_each_problem_and_the_fix(tmp_path: Path) -> None:
    env = {"DATA_ROOT": str(tmp_path / "nodata"), "TOKENIZER": "/no/such/tokenizer", "SAVE_ROOT": "/proc/ckpt"}
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    yaml = resolve_yaml("mpt-7b")
    problems = start_problems(yaml, plan, training_config(yaml, plan, env), tmp_path)
    assert len(problems) == 5, problems
    train, evaluation, tokenizer, save, flash = problems
    assert f"dataset split 'train_small' not found at {tmp_path}/nodata/train_small/index.json" in train
    assert "1.c4-preprocess.sbatch" in train and "'val_small'" in evaluation
    assert tokenizer.startswith("tokenizer folder /no/such/tokenizer does not exist")
    assert save.startswith("cannot create the checkpoint folder /proc/ckpt/mpt-train-local-1/checkpoints")
    assert flash.startswith("mpt-7b uses flash attention, which needs GPUs, and this node has none")


def test_node_action_stops_before_launching_when_inputs_are_missing(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATA_ROOT": str(tmp_path / "nodata"),
        "SAVE_ROOT": str(tmp_path / "ck"),
        "TOKENIZER": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", "node", "mpt-tiny-cpu"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("launch: error: node 0: train_loader: dataset split 'train_small' not found")
    assert "[run-header]" not in out.stdout and "Traceback" not in out.stderr


def test_training_script_logs_its_start_and_end_with_exit_code_and_elapsed_time(tmp_path: Path) -> None:
    """The job's first and last lines, here for a run the preflight stops (exit 2) outside Slurm."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "DATA_ROOT": str(tmp_path / "nodata"),
        "SAVE_ROOT": str(tmp_path / "ck"),
        "TOKENIZER": str(tmp_path),
        "LOG_DIR": str(tmp_path / "logs"),
        "VENV": str(tmp_path / "novenv"),
        "IMAGE": "",
    }
    script = REPO_ROOT / "slurm-scripts" / "2.train-mpt-manual-distributed.sbatch"
    out = subprocess.run(["bash", str(script), "mpt-tiny-cpu"], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    (log,) = (tmp_path / "logs").glob("mpt-train_local-*.out")
    lines = log.read_text().splitlines()
    job = log.name.removeprefix("mpt-train_").removesuffix(".out")
    assert re.fullmatch(rf"\[\S+\] job {job} start 0 on \S+", lines[0]), lines[0]
    assert "launch: error: node 0: train_loader: dataset split 'train_small' not found" in lines[1]
    assert re.fullmatch(rf"\[\S+\] job {job} end: exit code 2 after \d+ s", lines[-1]), lines[-1]


def test_two_runs_started_in_the_same_second_get_their_own_job_id_and_log(tmp_path: Path) -> None:
    """Local job ids carry the script's PID beside the time: two runs started at once (here two that
    the preflight stops) never share a job id, run name, log file or checkpoint folder."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "DATA_ROOT": str(tmp_path / "nodata"),
        "SAVE_ROOT": str(tmp_path / "ck"),
        "TOKENIZER": str(tmp_path),
        "LOG_DIR": str(tmp_path / "logs"),
        "VENV": str(tmp_path / "novenv"),
        "IMAGE": "",
    }
    script = REPO_ROOT / "slurm-scripts" / "2.train-mpt-manual-distributed.sbatch"
    runs = [subprocess.Popen(["bash", str(script), "mpt-tiny-cpu"], env=env, stdout=subprocess.DEVNULL) for _ in "ab"]
    assert [r.wait(timeout=120) for r in runs] == [2, 2]
    logs = sorted((tmp_path / "logs").glob("mpt-train_local-*.out"))
    ids = [log.name.removeprefix("mpt-train_").removesuffix(".out") for log in logs]
    assert len(ids) == 2 and {i.rsplit("-", 1)[1] for i in ids} == {str(r.pid) for r in runs}, ids
    for log, job in zip(logs, ids, strict=True):
        starts = [x for x in log.read_text().splitlines() if " start 0 on " in x]
        assert len(starts) == 1 and f"job {job} start 0" in starts[0]


def test_preflight_refuses_data_that_does_not_fit_the_model(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real demo dataset (128-token samples of the demo BPE) against models it does not fit."""
    from test_case.demo.bpe_tokenizer import gpt2_tokenizer_folder

    env = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1]), "SAVE_ROOT": str(tmp_path / "ck")}
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    yaml = resolve_yaml("mpt-tiny-cpu")

    def problems(*overrides: str, **env_extra: str) -> list[str]:
        cfg = training_config(yaml, plan, env | env_extra, overrides)
        return start_problems(yaml, plan, cfg, tmp_path)

    assert problems() == []
    seq = problems("variables.max_seq_len=256")
    assert len(seq) == 2  # train and eval splits
    assert seq[0] == (
        f"train_loader: dataset {mds_root}/train_small holds 128-token samples but the model trains on "
        "max_seq_len=256: preprocess with CONCAT_TOKENS=256 (into another DATA_ROOT), or train with max_seq_len=128"
    )
    # a run that cannot start leaves no empty checkpoint folder (it was created to check it is writable)
    assert len(problems("variables.max_seq_len=256", SAVE_ROOT=str(tmp_path / "fresh" / "ck"))) == 2
    assert not (tmp_path / "fresh").exists()
    assert problems(SAVE_ROOT=str(tmp_path / "fresh" / "ck")) == []
    assert list((tmp_path / "fresh" / "ck").glob("*/checkpoints")), "a run that starts keeps its folder"
    (vocab,) = [p for p in problems("model.vocab_size=1000") if p.startswith("train_loader")]
    assert "holds token ids up to" in vocab and "the model's vocab_size is 1000" in vocab
    other = gpt2_tokenizer_folder(tmp_path / "gpt2")
    tok = [p for p in problems(TOKENIZER=str(other)) if "was tokenized with" in p]
    assert len(tok) == 2 and f"{demo_assets[1].resolve()} but training uses {other.resolve()}" in tok[0]
    # the same tokenizer in another folder is the same tokenizer
    copy = tmp_path / "copy"
    shutil.copytree(demo_assets[1], copy)
    assert problems(TOKENIZER=str(copy)) == []


def test_run_header_names_the_dataset_it_trains_on(mds_root: Path, demo_assets: tuple[Path, Path]) -> None:
    from test_case.training.run_config import train_dataset_facts

    env = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1])}
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    cfg = training_config(resolve_yaml("mpt-tiny-cpu"), plan, env)
    header = run_header(plan, "mpt-tiny-cpu", env, [], train_dataset_facts(cfg, Path.cwd()))
    assert (header.dataset_sample_tokens, header.dataset_tokenizer) == (128, str(demo_assets[1].resolve()))
    assert parse_composer_log(header.lines()).header == header


def run_launch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


def test_check_names_a_mistyped_key_and_the_nearest_valid_one_before_anything_starts(
    mds_root: Path, demo_assets: tuple[Path, Path]
) -> None:
    data = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1])}
    out = run_launch("check", "mpt-tiny-cpu", "max_durtion=60ba", **data)
    assert (out.returncode, out.stderr) == (
        2,
        "launch: error: mpt-tiny-cpu.yaml: llm-foundry has no config key 'max_durtion': did you mean 'max_duration'?\n",
    )
    out = run_launch("plan", "mpt-tiny-cpu", "train_loader.dataset.max_seq_lem=128", "oops", **data)
    assert out.returncode == 2 and out.stdout == ""
    nested, bare = out.stderr.splitlines()
    assert "train_loader.dataset has no key 'max_seq_lem'; did you mean train_loader.dataset.max_seq_len?" in nested
    assert bare == "launch: error: override 'oops' is not key=value (e.g. max_duration=200ba)"
    out = run_launch("node", "mpt-tiny-cpu", "max_durtion=60ba", **data)
    assert out.returncode == 2 and "no config key 'max_durtion'" in out.stderr and "[run-header]" not in out.stdout
    out = run_launch("check", "mpt-tiny-cpu", "max_duration=60ba", "variables.my_note=1", **data)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert "configuration and data are fine" in out.stdout
    out = run_launch("check", "mpt-tiny-cpu", "variables.max_seq_len=64", **data)
    assert out.returncode == 2 and "holds 128-token samples but the model trains on max_seq_len=64" in out.stderr


@pytest.mark.parametrize("script", ["1.c4-preprocess.sbatch", "2.train-mpt-manual-distributed.sbatch"])
def test_a_job_submitted_outside_the_repository_says_how_to_find_it(script: str, tmp_path: Path) -> None:
    """As Slurm runs the stored copy of the script: from its spool folder, the submit directory elsewhere."""
    copy = tmp_path / "slurm_script"
    shutil.copy(REPO_ROOT / "slurm-scripts" / script, copy)
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "n1"}
    out = subprocess.run(["bash", str(copy)], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    name = script.removesuffix(".sbatch")
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == (
        f"{name}: error: no suite at {tmp_path} (the submit directory): submit from the repository root or "
        "slurm-scripts/, or export SUITE_ROOT=/path/to/the/repository\n"
    )
    out = subprocess.run(
        ["bash", str(copy)],
        capture_output=True,
        text=True,
        env={**env, "SUITE_ROOT": str(REPO_ROOT), "IMAGE": "/no/such.sqsh"},
        cwd=tmp_path,
        check=False,
    )  # SUITE_ROOT finds the suite: the next check (the image) is what stops it
    assert out.returncode == 2 and "IMAGE=/no/such.sqsh does not exist" in out.stderr, out.stderr
    out = subprocess.run(["bash", str(copy), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "no suite at" in out.stderr  # --help too needs the suite to find its text


def test_a_global_batch_the_ranks_cannot_share_stops_the_job_before_composer_starts(
    mds_root: Path, demo_assets: tuple[Path, Path]
) -> None:
    """llm-foundry's own rule (calculate_batch_size_info): the global batch divides evenly over the
    ranks, else every rank raises a ValueError after Composer has started."""
    assert batch_problem(16, 2, 1) is None and batch_problem("16", 3, 1) is None
    assert batch_problem(16, 3, 1) == (
        "global_train_batch_size=16 is not divisible by the job's 3 ranks (3 node(s) x 1): llm-foundry would stop "
        "every rank; use global_train_batch_size=15 or 18, or run on 1, 2, 4, 8, 16 node(s)"
    )
    assert batch_problem(1024, 24, 8) == (
        "global_train_batch_size=1024 is not divisible by the job's 24 ranks (3 node(s) x 8): llm-foundry would "
        "stop every rank; use global_train_batch_size=1008 or 1032, or run on 1, 2, 4, 8, 16, 32 node(s)"
    )
    data = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1])}
    out = run_launch("check", "mpt-tiny-cpu", "global_train_batch_size=15", CPU_PROCS_PER_NODE="2", **data)
    assert (out.returncode, out.stderr) == (
        2,
        "launch: error: global_train_batch_size=15 is not divisible by the job's 2 ranks (1 node(s) x 2): "
        "llm-foundry would stop every rank; use global_train_batch_size=14 or 16\n",
    )
    out = run_launch("check", "mpt-7b", "variables.max_seq_len=128", GPU_TYPE="h100-sxm", NODES="3", **data)
    assert out.returncode == 2 and "global_train_batch_size=1024 is not divisible by the job's 24 ranks" in out.stderr


def test_checkpoint_size_estimate_matches_the_parameters_composer_counts() -> None:
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    tiny = checkpoint_bytes(training_config(resolve_yaml("mpt-tiny-cpu"), plan, {}))
    assert tiny is not None and tiny / CHECKPOINT_BYTES_PER_PARAM == pytest.approx(918_144, rel=0.01)  # n_params logged
    seven = checkpoint_bytes(training_config(resolve_yaml("mpt-7b"), plan, {}))
    assert seven is not None and seven / CHECKPOINT_BYTES_PER_PARAM == pytest.approx(6.65e9, rel=0.01)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` at ``path`` (root only), unmounted after."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root; CI runs as root")
def test_preflight_names_a_full_dev_shm_and_a_checkpoint_folder_without_room(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    plan = plan_node({"LOCAL_JOB_ID": "local-1"}, gpus=0)
    yaml = resolve_yaml("mpt-tiny-cpu")
    with tmpfs(tmp_path / "ck", "16m") as ck, tmpfs(tmp_path / "shm", "512m") as shm:
        env = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1]), "SAVE_ROOT": str(ck)}
        cfg = training_config(yaml, plan, env)
        assert start_problems(yaml, plan, cfg, tmp_path, shm=shm) == []  # 11 MB checkpoint, 384 MiB of shm: room
        (ck / "other-run.bin").write_bytes(b"\0" * (8 << 20))
        (shm / "leftover").write_bytes(b"\0" * (300 << 20))
        problems = start_problems(yaml, plan, cfg, tmp_path, shm=shm)
    assert len(problems) == 2, problems
    full_shm, no_room = problems
    assert full_shm.startswith(f"{shm} on {socket.gethostname()} has 212 MiB free of 512 MiB and 1 process(es) need")
    assert "(sbatch --exclude=" in full_shm
    assert no_room.startswith(f"the checkpoint folder {ck}/mpt-train-local-1/checkpoints has 8 MB free")
    assert "one checkpoint of this model takes about 11 MB" in no_room and "set SAVE_ROOT" in no_room
