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

Only Composer's default names are handled (``save_filename``/``save_latest_filename`` unset, as in
every yaml here); sharded checkpoints (folders per batch) are not touched.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"ep(?P<epoch>\d+)-ba(?P<batch>\d+)-rank0\.pt")
LATEST_NAME = "latest-rank0.pt"
UNFINISHED_DIR = "unfinished"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int
    batch: int

    @property
    def complete(self) -> bool:
        return is_complete_checkpoint(self.path)


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``torch.save`` finished writing ``path``: a readable zip with a pickled state in it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Rank 0's checkpoint files in ``folder``, oldest first."""
    found = []
    for entry in folder.iterdir():
        match = CHECKPOINT_NAME.fullmatch(entry.name)
        if match and entry.is_file() and not entry.is_symlink():
            found.append(Checkpoint(entry, int(match["epoch"]), int(match["batch"])))
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


def _point_latest(folder: Path, checkpoint: Path) -> None:
    """Make ``latest-rank0.pt`` a relative symlink to ``checkpoint``, replacing any old link atomically."""
    tmp = folder / f".{LATEST_NAME}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(checkpoint.name)
    os.replace(tmp, folder / LATEST_NAME)


def repair_save_folder(folder: Path) -> list[str]:
    """Put ``folder`` in the state Composer's autoresume expects; what was changed, one line each."""
    if not folder.is_dir():
        return []
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        return []
    latest = folder / LATEST_NAME
    pointed = os.readlink(latest) if latest.is_symlink() else None
    if pointed is not None and not CHECKPOINT_NAME.fullmatch(Path(pointed).name):
        return []  # a sharded checkpoint folder or a custom name: not ours to judge
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
        changes.append(f"{LATEST_NAME} pointed to {pointed}, which is incomplete: removed; {resume_text}")
    if resume is not None and (pointed is None or (folder / pointed).resolve() != resume.path.resolve()):
        before = f"pointed to {pointed}" if pointed is not None else "was missing"
        _point_latest(folder, resume.path)
        changes.append(
            f"{LATEST_NAME} {before} (the job stopped while saving): now points to {resume.path.name}, "
            "the newest complete checkpoint"
        )
    return changes
