"""What a split folder is made of (``dataset.json``), and the claim that refuses a folder holding something else.

``dataset.json`` is written first, before any part: the options that decide the output's bytes,
the input files (path and size) and the part count. A rerun with the same ones resumes; any other
command is refused (`OutputConflict`), as is a folder this tool did not write. Other splits of the
same ``--out-root`` read it to refuse shared input files (`preprocessing.splits.overlap_problem`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from preprocessing.convert import ConvertOptions
from preprocessing.files import publish_once
from preprocessing.inputs import HUB_PREFIX
from preprocessing.splits import FINGERPRINT

# What this tool writes in a split folder, finished or left by a killed run (temporary files of
# `preprocessing.files`: ".<name>."; ".merge-": the merged index's, by earlier versions).
OWN_ENTRIES = (
    ".dataset.json.",
    "part-",
    ".part-",
    ".merge-",
    ".index.json.",
    ".summary.json.",
    ".complete",
    ".writer",
)


class OutputConflict(RuntimeError):
    """The output folder holds something else than this conversion would write."""


def fingerprint(files: list[Path], options: ConvertOptions, total_parts: int) -> dict[str, Any]:
    """What makes this dataset: options, input files (path and size) and the part count."""
    inputs = [[str(f), 0] if str(f).startswith(HUB_PREFIX) else [str(f.resolve()), f.stat().st_size] for f in files]
    return {"options": _bytes_options(asdict(options)), "inputs": inputs, "parts": total_parts}


def _bytes_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options that decide the output's bytes: ``strict`` does not (it only stops at a bad line),
    and options at their defaults are left out, so folders written before an option existed still match."""
    opts = {k: v for k, v in opts.items() if k != "strict"}
    for key, default in (("text_field", "text"), ("domain_field", ""), ("holdout", 0.0), ("held_out", False)):
        if opts.get(key) == default:
            opts.pop(key, None)
    return opts


def claim_output(split_dir: Path, fp: dict[str, Any]) -> None:
    """Record what this folder will hold, or refuse a folder that holds something else.

    Safe when several Slurm tasks start at once: the fingerprint is published with
    `preprocessing.files.publish_once`, which only one task can win; the others compare against it.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    existing = split_dir / FINGERPRINT
    if not existing.exists():
        foreign = sorted(p.name for p in split_dir.iterdir() if not p.name.startswith(OWN_ENTRIES))
        if foreign:
            raise OutputConflict(
                f"{split_dir} is not empty and was not written by this tool ({', '.join(foreign[:3])}): "
                "use another --out-root or --split"
            )
        publish_once(existing, json.dumps(fp, indent=2) + "\n")  # lost to another task: compare below
    old = json.loads(existing.read_text())
    old["options"] = _bytes_options(old.get("options", {}))  # written by a version that recorded strict
    if old != fp:
        diffs = [k for k in fp if old.get(k) != fp[k]]
        raise OutputConflict(
            f"{split_dir} holds a different dataset ({', '.join(diffs)} differ): use another --out-root or "
            "--split, or delete that folder to start over"
        )
