"""Files that others read while this package may be writing them: whole or not at all.

Every file the converter writes for another process to read (``index.json``, ``summary.json``,
``dataset.json``, a part's ``.complete.json``, the writer lock) goes through one of these two, on
a local disk, NFS or Lustre alike:

* `write_atomic`: write a temporary file beside it, flush it to disk, rename it over the old one:
  a reader sees the old file or the new one, never half of one;
* `publish_once`: the same temporary file, linked to its name with ``os.link``, which fails when the
  name exists: of several writers at once exactly one wins (``dataset.json``, the writer lock).

The temporary file is ``.<name>.<pid>-<random>`` (a leading dot of the name not doubled), so a
split folder knows a leftover of a killed run as its own (`preprocessing.claim.OWN_ENTRIES`);
it is created as ``open`` creates a file (``0666`` less the umask: ``rw-r--r--`` by default), so
the people who share a dataset can read every file of it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _temporary(path: Path, text: str) -> Path:
    """A new file beside ``path`` holding ``text``, on disk."""
    tmp = path.parent / f".{path.name.lstrip('.')}.{os.getpid()}-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename."""
    os.replace(_temporary(path, text), path)


def publish_once(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; whether this call created it."""
    tmp = _temporary(path, text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
