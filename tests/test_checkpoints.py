"""The save folder a job killed while saving leaves behind, repaired before the next start.

Checkpoints are real ``torch.save`` files; an incomplete one is a real one cut short, as a kill while
writing leaves it. The judge of "in order" is Composer's own check that made the requeued CI job fail
(``ensure_folder_has_no_conflicting_files``), run against the batch the repaired folder resumes from.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from composer.core import Timestamp
from composer.utils.file_helpers import ensure_folder_has_no_conflicting_files

from test_case.training.checkpoints import (
    LATEST_NAME,
    LATEST_SHARDED_NAME,
    SHARDED_METADATA,
    is_complete_checkpoint,
    repair_save_folder,
)
from test_case.training.launch import prepare_resume
from test_case.training.node_plan import plan_node
from test_case.training.restarts import newest_checkpoint_batch
from test_case.training.run_config import resolve_yaml, training_config

COMPOSER_FILENAME = "ep{epoch}-ba{batch}-rank{rank}.pt"


def save(folder: Path, batch: int, *, complete: bool = True) -> Path:
    path = folder / f"ep0-ba{batch}-rank0.pt"
    torch.save({"state": {"batch": batch}, "weights": torch.arange(20_000, dtype=torch.float32) * batch}, path)
    if not complete:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 3 // 5])
    return path


def point_latest(folder: Path, target: Path) -> None:
    (folder / LATEST_NAME).symlink_to(target.name)


def resumes_from(folder: Path) -> int:
    """The batch Composer's autoresume would load (0: none), asserting its conflict check passes."""
    latest = folder / LATEST_NAME
    batch = int(torch.load(latest, weights_only=True)["state"]["batch"]) if latest.exists() else 0
    ensure_folder_has_no_conflicting_files(folder, COMPOSER_FILENAME, Timestamp(epoch=0, batch=batch))
    return batch


def test_complete_means_torch_finished_writing(tmp_path: Path) -> None:
    assert is_complete_checkpoint(save(tmp_path, 10))
    assert not is_complete_checkpoint(save(tmp_path, 20, complete=False))
    (tmp_path / "empty.pt").touch()
    assert not is_complete_checkpoint(tmp_path / "empty.pt")


def test_killed_while_writing_a_later_checkpoint(tmp_path: Path) -> None:
    point_latest(tmp_path, save(tmp_path, 10))
    partial = save(tmp_path, 20, complete=False)
    partial_bytes = partial.read_bytes()
    with pytest.raises(FileExistsError, match=r"ba20-rank0\.pt may conflict"):  # the CI failure
        resumes_from(tmp_path)
    (change,) = repair_save_folder(tmp_path)
    assert change == (
        "checkpoint ep0-ba20-rank0.pt is incomplete (the job stopped while writing it): "
        "moved to unfinished/ep0-ba20-rank0.pt; resuming from ep0-ba10-rank0.pt"
    )
    assert resumes_from(tmp_path) == 10
    assert (tmp_path / "unfinished" / partial.name).read_bytes() == partial_bytes  # moved, not lost


def test_killed_while_writing_the_first_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 10, complete=False)
    with pytest.raises(FileExistsError):
        resumes_from(tmp_path)
    (change,) = repair_save_folder(tmp_path)
    assert change.endswith("no complete checkpoint: starting from batch 0")
    assert resumes_from(tmp_path) == 0 and not (tmp_path / LATEST_NAME).is_symlink()


def test_killed_between_removing_and_recreating_the_symlink(tmp_path: Path) -> None:
    save(tmp_path, 10)  # rotation deletes it only after the new symlink exists
    save(tmp_path, 20)
    with pytest.raises(FileExistsError):  # autoresume finds no symlink and starts from batch 0
        resumes_from(tmp_path)
    (change,) = repair_save_folder(tmp_path)
    assert change == (
        f"{LATEST_NAME} was missing (the job stopped while saving): now points to ep0-ba20-rank0.pt, "
        "the newest complete checkpoint"
    )
    assert resumes_from(tmp_path) == 20 and os.readlink(tmp_path / LATEST_NAME) == "ep0-ba20-rank0.pt"


def test_killed_after_writing_before_moving_the_symlink(tmp_path: Path) -> None:
    point_latest(tmp_path, save(tmp_path, 10))
    save(tmp_path, 20)
    (change,) = repair_save_folder(tmp_path)
    assert change.startswith(f"{LATEST_NAME} pointed to ep0-ba10-rank0.pt")
    assert resumes_from(tmp_path) == 20


def test_latest_pointing_at_an_incomplete_checkpoint_is_removed(tmp_path: Path) -> None:
    point_latest(tmp_path, save(tmp_path, 10, complete=False))
    changes = repair_save_folder(tmp_path)
    assert len(changes) == 2 and changes[1].startswith(f"{LATEST_NAME} pointed to ep0-ba10-rank0.pt")
    assert resumes_from(tmp_path) == 0


def test_a_folder_in_order_is_left_untouched(tmp_path: Path) -> None:
    assert repair_save_folder(tmp_path / "not-yet-created") == []
    assert repair_save_folder(tmp_path) == []
    save(tmp_path, 10)
    point_latest(tmp_path, save(tmp_path, 20))
    before = {p.name: (p.stat().st_mtime_ns, os.readlink(p) if p.is_symlink() else None) for p in tmp_path.iterdir()}
    assert repair_save_folder(tmp_path) == []
    after = {p.name: (p.stat().st_mtime_ns, os.readlink(p) if p.is_symlink() else None) for p in tmp_path.iterdir()}
    assert after == before and resumes_from(tmp_path) == 20


def test_a_second_unfinished_file_of_the_same_name_does_not_overwrite_the_first(tmp_path: Path) -> None:
    point_latest(tmp_path, save(tmp_path, 10))
    first = save(tmp_path, 20, complete=False).read_bytes()
    repair_save_folder(tmp_path)
    second = save(tmp_path, 20, complete=False)
    second.write_bytes(second.read_bytes()[:1000])
    (change,) = repair_save_folder(tmp_path)
    assert "moved to unfinished/ep0-ba20-rank0.pt.1;" in change
    assert (tmp_path / "unfinished" / "ep0-ba20-rank0.pt").read_bytes() == first
    assert len((tmp_path / "unfinished" / "ep0-ba20-rank0.pt.1").read_bytes()) == 1000


def save_sharded(folder: Path, batch: int, *, complete: bool = True) -> Path:
    """A real torch.distributed.checkpoint save (what Composer writes per rank for a sharded state
    dict) into ``ep0-ba<batch>/``; incomplete: rank 0 never wrote ``.metadata`` (killed first)."""
    import torch.distributed.checkpoint as dcp

    path = folder / f"ep0-ba{batch}"
    state = {"batch": torch.tensor(batch), "weights": torch.arange(20_000, dtype=torch.float32) * batch}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    assert sorted(p.name for p in path.iterdir()) == [SHARDED_METADATA, "__0_0.distcp"]
    if not complete:
        (path / SHARDED_METADATA).unlink()
    return path


def sharded_resumes_from(folder: Path) -> int:
    """The batch autoresume would load through ``latest-sharded-rank0`` (0: none), read back by DCP."""
    import torch.distributed.checkpoint as dcp

    latest = folder / LATEST_SHARDED_NAME
    if not latest.exists():
        return 0
    state = {"batch": torch.tensor(0), "weights": torch.zeros(20_000)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(latest), no_dist=True)
    return int(state["batch"])


def test_sharded_killed_while_writing_a_later_checkpoint(tmp_path: Path) -> None:
    (tmp_path / LATEST_SHARDED_NAME).symlink_to(save_sharded(tmp_path, 10).name)
    save_sharded(tmp_path, 20, complete=False)
    (change,) = repair_save_folder(tmp_path)
    assert change == (
        "checkpoint ep0-ba20 is incomplete (the job stopped while writing it): moved to unfinished/ep0-ba20; "
        "resuming from ep0-ba10"
    )
    assert sharded_resumes_from(tmp_path) == 10
    assert newest_checkpoint_batch(tmp_path) == 10  # what the restart decision counts as progress
    assert repair_save_folder(tmp_path) == []  # in order now


def test_sharded_killed_between_removing_and_recreating_the_symlink(tmp_path: Path) -> None:
    save_sharded(tmp_path, 10)
    save_sharded(tmp_path, 20)
    assert sharded_resumes_from(tmp_path) == 0  # autoresume alone would start over
    (change,) = repair_save_folder(tmp_path)
    assert change.startswith(
        f"{LATEST_SHARDED_NAME} was missing (the job stopped while saving): now points to ep0-ba20"
    )
    assert sharded_resumes_from(tmp_path) == 20 and newest_checkpoint_batch(tmp_path) == 20


def test_full_and_sharded_checkpoints_each_keep_their_own_symlink(tmp_path: Path) -> None:
    point_latest(tmp_path, save(tmp_path, 10))
    (tmp_path / LATEST_SHARDED_NAME).symlink_to(save_sharded(tmp_path, 30).name)
    assert repair_save_folder(tmp_path) == []
    assert resumes_from(tmp_path) == 10 and sharded_resumes_from(tmp_path) == 30
    (tmp_path / "custom").mkdir()
    (tmp_path / LATEST_SHARDED_NAME).unlink()
    (tmp_path / LATEST_SHARDED_NAME).symlink_to("custom")  # a custom name: not ours to judge
    save_sharded(tmp_path, 40, complete=False)
    assert repair_save_folder(tmp_path) == []


def test_the_launcher_repairs_only_an_autoresuming_run_with_default_names(tmp_path: Path) -> None:
    env = {"SAVE_ROOT": str(tmp_path), "RUN_NAME": "r"}
    plan = plan_node(env, gpus=0)
    folder = tmp_path / "r" / "checkpoints"
    folder.mkdir(parents=True)

    def repair(*overrides: str) -> list[str]:
        return prepare_resume(training_config(resolve_yaml("mpt-tiny-cpu"), plan, env, overrides), tmp_path)

    save(folder, 10, complete=False)
    assert repair("autoresume=false") == []
    assert repair("save_filename=ba{batch}.pt") == []
    assert repair(f"save_folder={tmp_path}/elsewhere") == []
    assert len(repair()) == 1 and not (folder / "ep0-ba10-rank0.pt").exists()
