"""The checkpoint a restarted job resumes from: the save folder a killed job left, put back in order.

Composer saves a (non-sharded) checkpoint in three steps: it writes ``ep{E}-ba{B}-rank0.pt`` in
place, removes the ``latest-rank0.pt`` symlink and creates it again pointing at the new file. A job
killed between them (``scontrol requeue``, the time-limit requeue, a node failure) leaves either a
half-written checkpoint no symlink points to, or no symlink at all. On the next start, autoresume
follows the symlink, and Composer's checkpoint saver refuses to train when the folder holds a
checkpoint from a later batch than the one it resumed from ("may conflict with a future checkpoint
of the current run"): the requeued job fails instead of resuming.

`repair_save_folder` runs on node 0 before Composer starts (`test_case.training.launch`) and applies one rule:
the run resumes from the newest *complete* checkpoint. A checkpoint is complete when its zip archive
(what ``torch.save`` writes) has its central directory, which is written last, on close. Incomplete
checkpoints are moved, not deleted, into ``unfinished/`` beside them; ``latest-rank0.pt`` is pointed
at the newest complete one. A folder in order is left untouched.

Sharded checkpoints (``fsdp_config.state_dict_type: sharded``, the 7B-70B yamls) are a folder per
save, ``ep{E}-ba{B}/``, one ``__{rank}_0.distcp`` per rank, and ``latest-sharded-rank0`` (llm-foundry's
name) pointing at the folder. torch.distributed.checkpoint writes ``.metadata`` last, on rank 0, once
every rank has written its file: a folder with it is complete. The same rule applies: incomplete
folders are moved into ``unfinished/`` and the symlink points at the newest complete one (a job killed
between removing the symlink and creating it again would otherwise start from batch 0).

Only Composer's default names are handled (``save_filename``/``save_latest_filename`` unset, as in
every yaml here).
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt")
SHARDED_NAME = re.compile(r"ep(?P<epoch>\d+)-ba(?P<batch>\d+)")  # a folder
LATEST_NAME = "latest-rank0.pt"
LATEST_SHARDED_NAME = "latest-sharded-rank0"
SHARDED_METADATA = ".metadata"  # torch.distributed.checkpoint's, written last
UNFINISHED_DIR = "unfinished"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int
    batch: int
    sharded: bool = False  # a folder of per-rank files, else rank 0's file

    @property
    def complete(self) -> bool:
        if self.sharded:
            return (self.path / SHARDED_METADATA).is_file()
        return is_complete_checkpoint(self.path)


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``torch.save`` finished writing ``path``: a readable zip with a pickled state in it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Rank 0's checkpoint files and the sharded checkpoint folders in ``folder``, oldest first."""
    found = []
    for entry in folder.iterdir():
        if entry.is_symlink():
            continue
        if (match := CHECKPOINT_NAME.fullmatch(entry.name)) and entry.is_file():
            found.append(Checkpoint(entry, int(match["epoch"]), int(match["batch"])))
        elif (match := SHARDED_NAME.fullmatch(entry.name)) and entry.is_dir():
            found.append(Checkpoint(entry, int(match["epoch"]), int(match["batch"]), sharded=True))
    return sorted(found, key=lambda c: (c.batch, c.epoch))


def _move_aside(path: Path) -> Path:
    """Move ``path`` into ``unfinished/`` beside it, never over an earlier file of the same name."""
    target_dir = path.parent / UNFINISHED_DIR
    target_dir.mkdir(exist_ok=True)
    target, n = target_dir / path.name, 0
    while target.exists():
        n += 1
        target = target_dir / f"{path.name}.{n}"
    path.rename(target)
    return target


def _point_latest(folder: Path, name: str, checkpoint: Path) -> None:
    """Make ``name`` a relative symlink to ``checkpoint``, replacing any old link atomically."""
    tmp = folder / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(checkpoint.name)
    os.replace(tmp, folder / name)


def repair_save_folder(folder: Path) -> list[str]:
    """Put ``folder`` in the state Composer's autoresume expects; what was changed, one line each."""
    if not folder.is_dir():
        return []
    checkpoints = list_checkpoints(folder)
    return _repair(folder, [c for c in checkpoints if not c.sharded], LATEST_NAME, CHECKPOINT_NAME) + _repair(
        folder, [c for c in checkpoints if c.sharded], LATEST_SHARDED_NAME, SHARDED_NAME
    )


def _repair(folder: Path, checkpoints: list[Checkpoint], latest_name: str, names: re.Pattern[str]) -> list[str]:
    """The rule of the module docstring for one kind of checkpoint and its symlink."""
    if not checkpoints:
        return []
    latest = folder / latest_name
    pointed = os.readlink(latest) if latest.is_symlink() else None
    if pointed is not None and not names.fullmatch(Path(pointed).name):
        return []  # a custom name: not ours to judge
    complete = [c for c in checkpoints if c.complete]
    resume = complete[-1] if complete else None
    resume_text = f"resuming from {resume.path.name}" if resume else "no complete checkpoint: starting from batch 0"
    changes = []
    for checkpoint in checkpoints:
        if checkpoint not in complete:
            moved = _move_aside(checkpoint.path)
            changes.append(
                f"checkpoint {checkpoint.path.name} is incomplete (the job stopped while writing it): "
                f"moved to {moved.relative_to(folder)}; {resume_text}"
            )
    if resume is None and latest.is_symlink():
        latest.unlink()
        changes.append(f"{latest_name} pointed to {pointed}, which is incomplete: removed; {resume_text}")
    if resume is not None and (pointed is None or (folder / pointed).resolve() != resume.path.resolve()):
        before = f"pointed to {pointed}" if pointed is not None else "was missing"
        _point_latest(folder, latest_name, resume.path)
        changes.append(
            f"{latest_name} {before} (the job stopped while saving): now points to {resume.path.name}, "
            "the newest complete checkpoint"
        )
    return changes
