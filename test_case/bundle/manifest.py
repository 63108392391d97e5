"""The bundle's manifest: what a bundle holds and the sha256 of every file, written and checked here.

A bundle is one folder::

    bundle.json            this module's `BundleManifest` (the contract between build and install)
    SHA256SUMS             the same hashes for `sha256sum -c SHA256SUMS` after a transfer
    wheels/                every wheel of the lock, for each Python the bundle serves
    requirements-cp311.txt what `pip install --require-hashes` installs for that Python, with hashes
    tokenizers/<name>/     tokenizers saved as folders (``EleutherAI/gpt-neox-20b`` or a local one)
    c4/                    optional C4 ``.json.gz`` files
    container/             optional: the image as a docker archive, the enroot ``.sqsh``
    suite.tar              the suite's repository at HEAD, to unpack on the cluster

Standard library only: the offline install checks a bundle before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "bundle.json"
SUMS_NAME = "SHA256SUMS"
FORMAT = 1
_CHUNK = 1 << 20


class BundleError(Exception):
    """A bundle that cannot be used: the message says which file and what to do."""


@dataclass(frozen=True)
class BundleFile:
    """One file of the bundle, by its path relative to the bundle folder."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class BundleManifest:
    """What ``make bundle`` wrote: read back by ``make install`` and by the sbatch scripts."""

    suite_version: str
    created: str  # ISO 8601, UTC
    platform: str  # the machine the wheels were built for, e.g. "linux x86_64 (glibc 2.36)"
    wheelsets: dict[str, str]  # Python tag ("cp311") -> requirements file with hashes
    tokenizers: dict[str, str]  # tokenizer name -> folder, relative to the bundle
    default_tokenizer: str | None  # the name TOKENIZER defaults to with BUNDLE set
    c4: str | None  # folder of C4 files, relative; None: none bundled
    container: list[str]  # docker archive and/or .sqsh, relative paths
    skipped: list[str]  # what was asked for and not bundled, with the reason
    files: list[BundleFile] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> str:
        """The manifest as ``bundle.json`` holds it."""
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> BundleManifest:
        """Parse ``bundle.json``; a file of another format is an error naming it."""
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise BundleError(
                    f"{where}: bundle format {raw.get('format')!r}, this suite reads format {FORMAT}: "
                    "rebuild the bundle with this version's `make bundle`"
                )
            raw["files"] = [BundleFile(**f) for f in raw["files"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise BundleError(f"{where}: not a bundle manifest ({err}): rebuild the bundle with `make bundle`") from err

    def tokenizer_folder(self, bundle: Path, name: str | None = None) -> Path:
        """The folder of tokenizer ``name`` (default: the bundle's default tokenizer)."""
        name = name or self.default_tokenizer
        if name is None or name not in self.tokenizers:
            have = ", ".join(sorted(self.tokenizers)) or "none"
            raise BundleError(
                f"{bundle / MANIFEST_NAME}: no tokenizer {name or '(default)'} in the bundle (it holds: {have}): "
                "set TOKENIZER to a tokenizer folder, or rebuild the bundle with TOKENIZER=DIR"
            )
        return bundle / self.tokenizers[name]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_files(bundle: Path) -> Iterator[Path]:
    """Every file under the bundle but the manifest and the sums, in a stable order."""
    for path in sorted(bundle.rglob("*")):
        if path.is_file() and path.relative_to(bundle).as_posix() not in (MANIFEST_NAME, SUMS_NAME):
            yield path


def hash_files(bundle: Path) -> list[BundleFile]:
    """A `BundleFile` for every file of the bundle."""
    return [BundleFile(p.relative_to(bundle).as_posix(), sha256_of(p), p.stat().st_size) for p in bundle_files(bundle)]


def write_manifest(bundle: Path, manifest: BundleManifest) -> None:
    """Write ``bundle.json`` and ``SHA256SUMS`` (two spaces between hash and path, as sha256sum)."""
    (bundle / MANIFEST_NAME).write_text(manifest.to_json())
    (bundle / SUMS_NAME).write_text("".join(f"{f.sha256}  {f.path}\n" for f in manifest.files))


def read_manifest(bundle: Path) -> BundleManifest:
    """The manifest of the bundle at ``bundle``; a folder without one is a clear error."""
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{bundle} holds no {MANIFEST_NAME}: point BUNDLE at the folder `make bundle` wrote "
            "(docs/airgap.md, 'Air-gapped clusters')"
        )
    return BundleManifest.from_json(path.read_text(), path)


def verify_bundle(bundle: Path, manifest: BundleManifest) -> list[str]:
    """One line per file that is missing, of another size or another sha256 than the manifest says."""
    problems = []
    for entry in manifest.files:
        path = bundle / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing (the manifest lists it, {entry.bytes:,} bytes)")
        elif (size := path.stat().st_size) != entry.bytes:
            problems.append(f"{path}: {size:,} bytes, the manifest says {entry.bytes:,}: altered or cut short")
        elif (digest := sha256_of(path)) != entry.sha256:
            problems.append(f"{path}: sha256 {digest}, the manifest says {entry.sha256}: altered")
    return problems
