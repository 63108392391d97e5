"""Splits never share documents: the held-out fraction, and the check that two splits read different files.

C4 names its files by split (``c4-train.*``, ``c4-validation.*``), most other corpora do not (a
SlimPajama chunk, a folder of Parquet files). Given such a folder, every split would take every
file, and a validation split would repeat the training documents: each eval loss after that is
measured on training data. Two ways to a validation split of its own:

- files of its own: ``--val-input`` (``VAL_INPUT`` in ``1.c4-preprocess.sbatch``) is what every
  validation split reads instead of ``--input``;
- a held-out fraction (``--holdout``, ``HOLDOUT``): every split reads the same files, and a hash of
  each document's text decides its side, so the commands agree without talking to each other and
  a document that appears twice lands on one side only. A validation split (`is_validation_split`)
  takes the held-out documents, any other split the rest.

Before a split is written, `overlap_problem` compares its input files with those of every split
on the other side (validation or not) in the same ``--out-root`` (their ``dataset.json``, written
when a split starts) and refuses shared files, unless a holdout on both sides separates their
documents.
Training checks the same between its train and eval data (`test_case.training.launch`), whatever
the folders, and the report warns about a run whose eval data overlaps its training data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a validation split's name starts with: C4's val, val_small, val_xsmall, and the usual others.
VALIDATION_PREFIXES = ("val", "eval", "test", "heldout", "held_out")
FINGERPRINT = "dataset.json"  # the file each split writes first (preprocessing.claim.claim_output)


def is_validation_split(split: str) -> bool:
    """A split that takes the held-out documents and ``--val-input``: val, val_small, validation, test..."""
    return split.lower().startswith(VALIDATION_PREFIXES)


@dataclass(frozen=True)
class Holdout:
    """A fixed fraction of the documents, chosen by a hash of their text, set aside for validation."""

    fraction: float  # of the documents, in (0, 1)
    held_out: bool  # this split takes the held-out documents (a validation split), else the rest

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"--holdout {self.fraction}: give a fraction between 0 and 1, e.g. 0.01")

    def takes(self, text: str) -> bool:
        """Whether this split takes the document: its text's 64-bit BLAKE2b below ``fraction`` of the range."""
        digest = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        return (digest < self.fraction * 2**64) == self.held_out


def holdout_of(options: dict[str, Any]) -> tuple[float, bool] | None:
    """(fraction, held_out) recorded in a split's options (dataset.json, summary.json); None without one."""
    fraction = options.get("holdout") or 0.0
    return (float(fraction), bool(options.get("held_out"))) if fraction else None


def separated(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two splits' options hold out the same fraction on opposite sides (no document in both)."""
    ha, hb = holdout_of(a), holdout_of(b)
    return ha is not None and hb is not None and ha[0] == hb[0] and ha[1] != hb[1]


def input_paths(fingerprint: dict[str, Any]) -> set[str]:
    """The input files (absolute paths) a ``dataset.json`` lists."""
    return {str(entry[0]) for entry in fingerprint.get("inputs", [])}


def overlap_problem(out_root: Path, split: str, fingerprint: dict[str, Any]) -> str | None:
    """The line refusing ``split`` when another split under ``out_root`` reads one of its input files
    without a holdout that separates them; None when they share nothing."""
    mine = input_paths(fingerprint)
    if not mine or not out_root.is_dir():
        return None
    for other in sorted(out_root.iterdir()):
        if is_validation_split(other.name) == is_validation_split(split) or not (other / FINGERPRINT).is_file():
            continue  # train and train_small, or val_small and val_xsmall, may share their files
        try:
            theirs = json.loads((other / FINGERPRINT).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(theirs, dict):
            continue
        shared = sorted(mine & input_paths(theirs))
        if not shared or separated(fingerprint.get("options", {}), theirs.get("options", {})):
            continue
        return (
            f"{split} would read {len(shared)} file(s) that split {other.name} ({other}) reads too "
            f"(first: {shared[0]}), so its documents would be {other.name}'s: give the validation split "
            "files of its own (--val-input; VAL_INPUT in 1.c4-preprocess.sbatch), or hold out a fraction "
            "of the documents from both splits (--holdout 0.01 on both; HOLDOUT=0.01), after deleting "
            f"{other} to remake it"
        )
    return None


def data_overlap(train: dict[str, Any], evaluation: dict[str, Any]) -> int:
    """Input files a training split and an eval split (their ``summary.json``) both read, when no
    holdout separates their documents (0: none shared, or separated)."""
    shared = _summary_files(train) & _summary_files(evaluation)
    if not shared or separated(train.get("options", {}), evaluation.get("options", {})):
        return 0
    return len(shared)


def _summary_files(summary: dict[str, Any]) -> set[str]:
    """Input files of a ``summary.json``: its sources without the ``[start:end]`` of a byte range."""
    return {str(Path(f.split("[", 1)[0] if f.endswith("]") else f).resolve()) for f in summary.get("input_files", [])}
