"""`python -m test_case.bundle`: make, check, install and read an air-gapped bundle.

    python -m test_case.bundle build --out DIR [--tokenizer DIR] [--no-hub] [--c4-input PATH ...]
        [--c4-files N] [--image-wheels] [--image-tag TAG] [--sqsh FILE] [--tarball]   # make bundle
    python -m test_case.bundle verify DIR        # every file against bundle.json
    python -m test_case.bundle install DIR       # make install BUNDLE=DIR (run with the venv's Python)
    python -m test_case.bundle tokenizer DIR     # the folder TOKENIZER defaults to (slurm-scripts/env.sh)

Exit code: 0 done, 1 a bundle that does not check or install (each file named), 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from test_case import REPO_ROOT
from test_case.bundle.manifest import BundleError, read_manifest, verify_bundle


def build_parser() -> argparse.ArgumentParser:
    """The four subcommands and their options."""
    parser = argparse.ArgumentParser(prog="python -m test_case.bundle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="make a bundle (on a connected machine, with the suite's venv)")
    build.add_argument("--out", type=Path, required=True, help="bundle folder (made or refreshed)")
    build.add_argument("--lock", type=Path, default=REPO_ROOT / "constraints.txt")
    build.add_argument("--tool", action="append", default=None, help="installer pin, default pip==25.3")
    build.add_argument("--image-wheels", action="store_true", help="also wheels for the image's Python 3.12")
    build.add_argument("--tokenizer", type=Path, help="a local tokenizer folder, bundled and made the default")
    build.add_argument("--tokenizer-name", action="append", default=[], help="hub tokenizer (default: the yamls')")
    build.add_argument("--no-hub", action="store_true", help="fetch nothing from the Hugging Face hub")
    build.add_argument("--c4-input", type=Path, nargs="+", default=[], help="local C4 files or folders")
    build.add_argument("--c4-files", type=int, default=0, help="first N C4 training files from the hub")
    build.add_argument("--image-tag", help="docker image to save as an archive when an engine has it")
    build.add_argument("--sqsh", type=Path, help="enroot image to include when it exists")
    build.add_argument("--tarball", action="store_true", help="also write DIR.tar beside the folder")
    verify = sub.add_parser("verify", help="check every file of a bundle against its manifest")
    verify.add_argument("bundle", type=Path)
    install = sub.add_parser("install", help="install the suite from a bundle with no index")
    install.add_argument("bundle", type=Path)
    install.add_argument("--python", type=Path, help="the venv's Python (default: this one)")
    install.add_argument("--project", type=Path, default=REPO_ROOT)
    tokenizer = sub.add_parser("tokenizer", help="print the folder of the bundle's (default) tokenizer")
    tokenizer.add_argument("bundle", type=Path)
    tokenizer.add_argument("--name", help="a tokenizer of the bundle by name (default: its default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            from test_case.bundle.build import BuildRequest, build_bundle  # needs the venv (packaging)

            if args.c4_files < 0:
                print("bundle: error: --c4-files must be 0 or more", file=sys.stderr)
                return 2
            build_bundle(
                BuildRequest(
                    out=args.out,
                    lock=args.lock,
                    tools=args.tool or ["pip==25.3"],
                    image_lock=REPO_ROOT / "constraints-py312.txt" if args.image_wheels else None,
                    tokenizer_names=args.tokenizer_name,
                    local_tokenizer=args.tokenizer,
                    hub=not args.no_hub,
                    c4_input=args.c4_input,
                    c4_files=args.c4_files,
                    image_tag=args.image_tag,
                    sqsh=args.sqsh,
                    tarball=args.tarball,
                )
            )
        elif args.command == "verify":
            manifest = read_manifest(args.bundle)
            if problems := verify_bundle(args.bundle, manifest):
                print("\n".join(problems), file=sys.stderr)
                return 1
            print(f"{args.bundle}: {len(manifest.files)} files, every sha256 as bundle.json says")
        elif args.command == "install":
            from test_case.bundle.install import main_install

            return main_install(args.bundle, args.python, args.project)
        else:
            print(read_manifest(args.bundle).tokenizer_folder(args.bundle.resolve(), args.name))
    except BundleError as err:
        print(f"bundle: error: {err}", file=sys.stderr)
        return 1
    return 0
