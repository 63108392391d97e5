"""Mixture files: which MDS datasets a run trains on and how much of each, as llm-foundry's streams.

A mixture is a YAML file (``MIXTURE=mix.yaml sbatch slurm-scripts/2.train-... MODEL``)::

    streams:
      c4:
        local: data/slimpajama/train/RedPajamaC4          # an MDS folder holding index.json
        proportion: 0.7
        eval: data/slimpajama/val_small/RedPajamaC4       # optional: an eval loader labelled "c4"
      wikipedia:
        local: data/slimpajama/train/RedPajamaWikipedia
        proportion: 0.3
        eval: data/slimpajama/val_small/RedPajamaWikipedia
    batching_method: random        # streaming's: random, stratified, per_stream, device_per_stream

Each stream has exactly one of streaming's three schemes, the same for every stream of a file:
``proportion`` (relative weights, normalised by streaming), ``repeat`` (how many times each sample
is seen per epoch) or ``choose`` (samples per epoch). Relative paths are relative to the mixture
file. `load_mixture` checks everything a user can get wrong, each as one line naming the file, the
stream and what to do; `mixture_overrides` turns a mixture into the OmegaConf overrides that set
``train_loader.dataset.streams`` (each stream ``local`` = the folder's parent, ``split`` = its name,
as streaming joins them; the dataset's own ``local`` and ``split`` null: streaming takes streams or a
folder, and llm-foundry would look for that split in every stream's folder) and, when streams name
``eval`` folders, one eval loader per stream (``eval_loaders``, each labelled by the stream's name,
built from the yaml's ``eval_loader``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMES = ("proportion", "repeat", "choose")
BATCHING_METHODS = ("random", "stratified", "per_stream", "device_per_stream")
FILE_KEYS = ("streams", "batching_method")
STREAM_KEYS = ("local", "eval", *SCHEMES)


class MixtureError(ValueError):
    """A mixture file that cannot be trained on: the message names the file, the stream and the fix."""


@dataclass(frozen=True)
class MixtureStream:
    """One stream of a mixture, its folders absolute."""

    name: str
    local: Path
    scheme: str  # one of SCHEMES
    weight: float  # the scheme's value (choose: a whole number)
    eval: Path | None = None


@dataclass(frozen=True)
class Mixture:
    """A checked mixture file."""

    path: Path
    streams: tuple[MixtureStream, ...]
    batching_method: str = "random"

    @property
    def scheme(self) -> str:
        """The scheme every stream uses."""
        return self.streams[0].scheme

    def shares(self) -> dict[str, float]:
        """Each stream's expected share of the samples drawn: its weight over the sum (proportion),
        or its samples per epoch over all of them (repeat and choose need the folders' sizes)."""
        if self.scheme == "proportion":
            total = sum(s.weight for s in self.streams)
            return {s.name: s.weight / total for s in self.streams}
        sizes = {s.name: _samples(s.local) for s in self.streams}
        drawn = {s.name: s.weight * sizes[s.name] if s.scheme == "repeat" else s.weight for s in self.streams}
        total = sum(drawn.values())
        return {name: value / total for name, value in drawn.items()}

    def describe(self) -> str:
        """One line for the run header: ``c4=0.7 wikipedia=0.3 (proportion, random) from mix.yaml``."""
        weights = " ".join(f"{s.name}={s.weight:g}" for s in self.streams)
        return f"{weights} ({self.scheme}, {self.batching_method}) from {self.path}"


def _samples(folder: Path) -> int:
    return sum(int(shard["samples"]) for shard in json.loads((folder / "index.json").read_text())["shards"])


def _nearest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _weight(where: str, scheme: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MixtureError(f"{where}: {scheme} {value!r} is not a number: give e.g. {scheme}: 0.3")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (scheme != "repeat" and number == 0):
        raise MixtureError(f"{where}: {scheme} {value!r} must be a positive number")
    if scheme == "choose" and number != int(number):
        raise MixtureError(f"{where}: choose {value!r} is a count of samples: give a whole number")
    return number


def _folder(where: str, what: str, value: object, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise MixtureError(f"{where}: {what} must be the path of an MDS folder")
    folder = (base / value).resolve()
    if not (folder / "index.json").is_file():
        raise MixtureError(
            f"{where}: {what} {value}: no index.json in {folder}: give a folder `python -m preprocessing` "
            "wrote (with --domain-field, one per domain under OUT_ROOT/SPLIT/)"
        )
    return folder


def load_mixture(path: Path) -> Mixture:
    """Read and check a mixture file (see the module docstring); `MixtureError` on any mistake."""
    import yaml

    if not path.is_file():
        raise MixtureError(f"MIXTURE={path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise MixtureError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("streams"), dict) or not raw["streams"]:
        raise MixtureError(f"{path}: needs a `streams:` mapping of name -> {{local, proportion|repeat|choose}}")
    for key in raw:
        if key not in FILE_KEYS:
            raise MixtureError(f"{path}: unknown key {key!r}{_nearest(str(key), FILE_KEYS)}")
    method = raw.get("batching_method", "random")
    if method not in BATCHING_METHODS:
        raise MixtureError(f"{path}: batching_method {method!r}: one of {', '.join(BATCHING_METHODS)}")
    streams = []
    for name, spec in raw["streams"].items():
        where = f"{path}: stream {name!r}"
        if not isinstance(spec, dict):
            raise MixtureError(f"{where}: give a mapping with local and one of {', '.join(SCHEMES)}")
        for key in spec:
            if key not in STREAM_KEYS:
                raise MixtureError(f"{where}: unknown key {key!r}{_nearest(str(key), STREAM_KEYS)}")
        schemes = [s for s in SCHEMES if s in spec]
        if len(schemes) != 1:
            raise MixtureError(
                f"{where}: give exactly one of {', '.join(SCHEMES)} (it has {', '.join(schemes) or 'none'})"
            )
        scheme = schemes[0]
        local = _folder(where, "local", spec.get("local"), path.parent)
        evaluated = _folder(where, "eval", spec["eval"], path.parent) if spec.get("eval") is not None else None
        streams.append(MixtureStream(str(name), local, scheme, _weight(where, scheme, spec[scheme]), evaluated))
    used = sorted({s.scheme for s in streams})
    if len(used) > 1:
        by = ", ".join(f"{s.name}: {s.scheme}" for s in streams)
        raise MixtureError(
            f"{path}: streams mix the schemes {' and '.join(used)} ({by}): use one for every stream "
            "(proportion for relative weights; repeat or choose for absolute numbers of samples)"
        )
    if used == ["repeat"] and not any(s.weight > 0 for s in streams):
        raise MixtureError(f"{path}: every stream repeats 0 times: nothing would be trained on")
    return Mixture(path.resolve(), tuple(streams), str(method))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def mixture_overrides(mixture: Mixture, eval_template: Mapping[str, Any] | None) -> list[str]:
    """OmegaConf dotlist overrides that make llm-foundry train on ``mixture`` (values as JSON, which
    OmegaConf reads as YAML); with ``eval`` folders, one eval loader per stream from ``eval_template``
    (the yaml's ``eval_loader``, ``${...}`` interpolations kept for OmegaConf to resolve)."""
    streams = {
        s.name: {"local": str(s.local.parent), "split": s.local.name, s.scheme: s.weight} for s in mixture.streams
    }
    out = [
        f"train_loader.dataset.streams={_json(streams)}",
        # streaming takes streams or a local folder, not both; llm-foundry looks for the dataset's own
        # split in every stream's folder: neither, with streams
        "train_loader.dataset.local=null",
        "train_loader.dataset.split=null",
        f"train_loader.dataset.batching_method={mixture.batching_method}",
    ]
    evaluated = [s for s in mixture.streams if s.eval is not None]
    if evaluated and eval_template is not None:
        loaders = []
        for s in evaluated:
            assert s.eval is not None
            loader = json.loads(json.dumps(eval_template))  # a deep copy of plain data
            loader["label"] = s.name
            loader.setdefault("dataset", {}).update({"local": str(s.eval.parent), "split": s.eval.name})
            loader["dataset"].pop("remote", None)
            loaders.append(loader)
        out += ["eval_loader=null", f"eval_loaders={_json(loaders)}"]
    return out
