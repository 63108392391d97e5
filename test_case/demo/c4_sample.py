"""A small C4-format sample written offline, from the docstrings of Python's standard library.

C4 (``allenai/c4``, ``en``) ships gzipped JSON lines named ``c4-train.00000-of-01024.json.gz`` and
``c4-validation.00000-of-00008.json.gz``; each line is ``{"text", "timestamp", "url"}``. This module
writes files of exactly that shape so the demo and the tests run with no download. The text is real
English prose that may be redistributed: the documentation strings of the standard library of the
running Python (PSF licence), read from the source with ``ast`` (nothing is imported or executed).
One document is one module: its docstring followed by those of its classes and functions.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MIN_DOC_CHARS = 300
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
TIMESTAMP = "2019-04-25T12:00:00Z"


@dataclass(frozen=True)
class SampleFiles:
    """Paths written by `write_c4_sample`."""

    train: list[Path]
    validation: list[Path]
    train_docs: int
    validation_docs: int


def stdlib_documents(stdlib_dir: Path | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(module_name, text)`` for every stdlib module with enough documentation, sorted."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIPPED_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and doc not in parts:
                    parts.append(doc.strip())
        text = "\n\n".join(p for p in parts if p)
        if len(text) >= MIN_DOC_CHARS:
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            yield module, text


def _deterministic_gzip_writer(path: Path, stack: contextlib.ExitStack) -> io.TextIOWrapper:
    """A text writer into ``path`` whose gzip header holds no time stamp or name: same text, same bytes.

    ``stack`` closes the text layer, the gzip stream and the file, in that order.
    """
    raw = stack.enter_context(path.open("wb"))
    gz = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6))
    return stack.enter_context(io.TextIOWrapper(gz, encoding="utf-8"))


def write_c4_sample(
    out_dir: Path, train_files: int = 2, validation_files: int = 1, validation_every: int = 10
) -> SampleFiles:
    """Write C4-named ``.json.gz`` files; every ``validation_every``-th document goes to validation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [out_dir / f"c4-train.{i:05d}-of-{train_files:05d}.json.gz" for i in range(train_files)]
    val = [out_dir / f"c4-validation.{i:05d}-of-{validation_files:05d}.json.gz" for i in range(validation_files)]
    n_train = n_val = 0
    with contextlib.ExitStack() as stack:
        handles = [_deterministic_gzip_writer(p, stack) for p in train + val]
        for i, (module, text) in enumerate(stdlib_documents()):
            record = {
                "text": text,
                "timestamp": TIMESTAMP,
                "url": f"https://docs.python.org/3/library/{module}.html",
            }
            if i % validation_every == 0:
                handle = handles[train_files + n_val % validation_files]
                n_val += 1
            else:
                handle = handles[n_train % train_files]
                n_train += 1
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return SampleFiles(train=train, validation=val, train_docs=n_train, validation_docs=n_val)
