"""The user's documentation against the code: README.md is a front page of at most 250 lines, and
what README.md and docs/*.md say exists does exist.

- every relative link resolves to a file, and an ``#anchor`` to a heading of it (GitHub's slugs);
- every ``make X`` in a code span or block is a target of the Makefile, and every ``NAME=`` after
  ``make`` one of its variables;
- every ``NAME=value`` a documented command line sets (before the command, after ``export``, or
  alone in a code span) is a setting of `test_case.settings.SETTINGS`, one of `EXTERNAL` (read by
  Slurm, NCCL, libfabric, torch, pip, the Hugging Face libraries or the test suite), or, alone in a
  code span, a Makefile variable;
- every ``--flag`` after one of our entry points on a documented command line (``report.py``,
  ``slurm-scripts/<script>``, ``3.acceptance.sh``, ``python -m test_case.<module>``,
  ``python -m preprocessing``, ``python -m benchmarks.<module>``) appears in what that entry point
  answers to ``--help`` (run once per entry point, and per subcommand where the line names one;
  each exits 0 with no side effect, which is checked too). Flags before the entry point belong to
  sbatch, srun or make and are not checked; nor are those after a lone ``--`` (sbatch's options);
- the names of docs/training.md's Settings tables are settings of the registry;
- the report.json fields docs/report.md names (the RUN table's first column, the quoted names of the
  schema) are fields of the typed records of `test_case.report.records` or keys of
  `test_case.report.render.report_document`.

Each check returns its problems as lines; the last test plants a fake flag, make target, setting,
report field and link in a copy and sees each reported. The tests/test_settings.py test keeps the
registry, the scripts' --help and the Settings tables in step the other way round.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import test_case.report.records as report_records
from test_case.report.figures import markdown_table
from test_case.report.records import Report
from test_case.report.render import report_document
from test_case.settings import SCRIPTS, SETTINGS
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

# Set on documented command lines and read by others than this suite's scripts: the Hugging Face
# libraries (the Makefile and env.sh set the OFFLINE ones), torch and OpenBLAS, pip (the bundle's
# install), Slurm, NCCL and libfabric (prefixes), and the test suite's quick tier (tests/conftest.py).
EXTERNAL = {
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PIP_CONFIG_FILE", "SLURM_CONF", "TEST_TIER",
    "IMAGE_STORAGE_DRIVER", "IMAGE_STORE", "KEEP_IMAGE_STORE", "STANDIN_PYTHON312",  # tests/image_standin.py
}  # fmt: skip
EXTERNAL_PREFIXES = ("NCCL_", "TORCH_NCCL_", "FI_", "SBATCH_", "SLURM_")

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=")  # an environment or make variable
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
COMMAND_WORDS = {"make", "sbatch", "srun", "bash", "python", "python3", ".venv/bin/python"}


def doc_files() -> list[Path]:
    return [README, *DOCS]


def without_code(text: str) -> str:
    """The text with its fenced blocks and code spans blanked (links and headings live outside)."""
    return SPAN.sub("", FENCE.sub("", text))


# --- command lines ---------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """Shell command lines of shell code blocks (continuations joined, comments dropped) and of code
    spans (a span may wrap a line), each ``&&`` or ``;`` part on its own."""
    lines: list[str] = []
    for lang, body in FENCE.findall(text):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lines.append(re.sub(r"(^|\s)#.*", "", line))
    lines += [" ".join(span.split()) for span in SPAN.findall(FENCE.sub("", text))]
    parts = [part.strip() for line in lines for part in re.split(r"&&|;", line)]
    return [part for part in parts if part]


def split_assignments(line: str) -> tuple[list[str], list[str]]:
    """The ``NAME=`` assignments a line starts with (after an ``export``), and the words after them."""
    words = line.split()
    if words and words[0] == "export":
        words = words[1:]
    names: list[str] = []
    while words and (m := ASSIGNMENT.match(words[0])):
        names.append(m.group(1))
        words = words[1:]
    return names, words


def is_command(words: list[str]) -> bool:
    """Words that start with a command: python, make, sbatch, ... or one of our entry points."""
    return bool(words) and (words[0] in COMMAND_WORDS or entry_point(words[:1]) is not None)


@functools.cache
def makefile() -> tuple[frozenset[str], frozenset[str]]:
    """The Makefile's targets and variables."""
    text = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.MULTILINE))
    variables = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", text))
    variables |= set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:+]?=", text, re.MULTILINE))
    return frozenset(targets), frozenset(variables)


def make_target_problems(text: str) -> list[str]:
    """``make X`` with no target X in the Makefile."""
    targets, _ = makefile()
    problems = []
    for line in command_lines(text):
        _, words = split_assignments(line)
        if words[:1] != ["make"]:
            continue
        for word in words[1:]:
            if not ASSIGNMENT.match(word) and not word.startswith("-") and word not in targets:
                problems.append(f"make {word}: no such target in the Makefile ({line})")
    return problems


def is_known_setting(name: str) -> bool:
    return name in {s.name for s in SETTINGS} or name in EXTERNAL or name.startswith(EXTERNAL_PREFIXES)


def assignment_problems(text: str) -> list[str]:
    """``NAME=`` on a documented command line that is no setting, external variable or make variable."""
    _, make_vars = makefile()
    problems = []
    for line in command_lines(text):
        names, words = split_assignments(line)
        if words[:1] == ["make"]:
            problems += [f"{w}: not a Makefile variable ({line})" for w in words[1:] if is_unknown_make_var(w)]
        if words and not is_command(words):
            continue  # not a command line (a quoted log line, a key=value override, prose)
        for name in names:
            if not (is_known_setting(name) or (not words and name in make_vars)):
                problems.append(f"{name}=: not a setting of test_case/settings.py nor a known external one ({line})")
    return problems


def is_unknown_make_var(word: str) -> bool:
    m = ASSIGNMENT.match(word)
    return m is not None and m.group(1) not in makefile()[1]


# --- entry points and their flags ------------------------------------------------------------


def entry_point(words: list[str]) -> tuple[int, tuple[str, ...]] | None:
    """Where our entry point is among a command's words, and the command that prints its help."""
    for i, word in enumerate(words):
        name = Path(word).name
        if name == "report.py":
            return i, (sys.executable, str(REPO_ROOT / "report.py"))
        if name in SCRIPTS and (word == name or word.endswith(f"slurm-scripts/{name}")):
            return i, ("bash", str(REPO_ROOT / "slurm-scripts" / name))
        if word == "-m" and i + 1 < len(words):
            module = words[i + 1]
            if module.split(".")[0] in ("test_case", "preprocessing", "benchmarks"):
                return i + 1, (sys.executable, "-m", module)
    return None


@functools.cache
def help_of(command: tuple[str, ...]) -> str:
    """What ``COMMAND --help`` prints; it must exit 0."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [*command, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} --help exited {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def subcommands(help_text: str) -> set[str]:
    m = re.search(r"\{([\w,-]+)\}", help_text)
    return set(m.group(1).split(",")) if m else set()


def flag_problems(text: str) -> list[str]:
    """``--flag`` after one of our entry points that its ``--help`` does not name."""
    problems = []
    for line in command_lines(text):
        _, words = split_assignments(line)
        found = entry_point(words) if is_command(words) else None
        if found is None:
            continue
        at, command = found
        rest = words[at + 1 :]
        if "--" in rest:  # what follows a lone -- goes to sbatch (3.acceptance.sh)
            rest = rest[: rest.index("--")]
        flags = FLAG.findall(" ".join(rest))
        if not flags:
            continue
        help_text = help_of(command)
        if command[0] == sys.executable and rest and rest[0] in subcommands(help_text):
            help_text += help_of((*command, rest[0]))
        for flag in flags:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text):
                shown = " ".join(command[1:]).replace(f"{REPO_ROOT}/", "")
                problems.append(f"{flag}: not in `{shown} --help` ({line})")
    return problems


# --- links -----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", text), re.MULTILINE):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def link_problems(path: Path, text: str) -> list[str]:
    """Relative links of ``text`` (the file at ``path``) to a missing file or heading."""
    problems = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link to {target}: no file {dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text())):
            problems.append(f"{path.name}: link to {target}: no heading #{anchor} in {dest.name}")
    return problems


# --- report.json fields ----------------------------------------------------------------------


def record_fields() -> set[str]:
    """Every field of the typed records report.json is written from, and its top-level keys."""
    names = set(report_document(Report()))
    for record in vars(report_records).values():
        if dataclasses.is_dataclass(record) and getattr(record, "__module__", "") == report_records.__name__:
            names |= {f.name for f in dataclasses.fields(record)}
    return names


def report_field_problems(text: str) -> list[str]:
    """Fields the report.json section names that no record has (the RUN table: RunSummary's)."""
    start = text.find("## report.json")
    if start < 0:
        return ["no '## report.json' section"]
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    run_fields = {f.name for f in dataclasses.fields(report_records.RunSummary)}
    every = record_fields()
    problems = []
    for row in re.findall(r"^\| (`[^|]*) \|", section, re.MULTILINE):
        problems += [f"RUN field {n}: not a field of RunSummary" for n in SPAN.findall(row) if n not in run_fields]
    for span in SPAN.findall(section):
        for name in re.findall(r'"([a-z_][a-z0-9_]*)"', span):
            if name not in every:
                problems.append(f"report.json field {name}: not a field of test_case/report/records.py")
    return problems


def changed_files() -> tuple[str, list[str]]:
    """The working tree's changed and untracked files, and what logs/ holds."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
    ).stdout
    logs = REPO_ROOT / "logs"
    return status, sorted(p.name for p in logs.iterdir()) if logs.is_dir() else []


# --- the tests -------------------------------------------------------------------------------


def all_docs() -> Iterator[tuple[Path, str]]:
    for path in doc_files():
        yield path, path.read_text()


def test_the_readme_is_a_front_page_of_at_most_250_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move detail to docs/"


def test_every_relative_link_resolves_to_a_file_and_heading() -> None:
    assert DOCS, "no docs/*.md"
    assert [p for path, text in all_docs() for p in link_problems(path, text)] == []
    # every docs page is reachable from the README
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in LINK.findall(without_code(README.read_text()))}
    assert [d.name for d in DOCS if d.resolve() not in linked] == []


def test_documented_make_targets_and_settings_exist() -> None:
    assert [p for _, text in all_docs() for p in make_target_problems(text)] == []
    assert [p for _, text in all_docs() for p in assignment_problems(text)] == []
    page = (REPO_ROOT / "docs" / "training.md").read_text()
    tables = page[page.index("## Settings (environment variables)") :]
    first_column = {n for row in re.findall(r"^\| (`[^|]*) \|", tables, re.MULTILINE) for n in SPAN.findall(row)}
    assert first_column - {s.name for s in SETTINGS} == set()
    assert len(first_column) > 30  # the tables were read


def test_documented_flags_are_accepted_by_their_entry_points() -> None:
    before = changed_files()
    assert [p for _, text in all_docs() for p in flag_problems(text)] == []
    assert changed_files() == before  # every --help wrote nothing
    assert help_of.cache_info().currsize >= 4  # the check ran several entry points' --help


def test_documented_report_json_fields_are_fields_of_the_records() -> None:
    text = (REPO_ROOT / "docs" / "report.md").read_text()
    assert report_field_problems(text) == []
    assert "tokens_per_sec_per_device" in record_fields()  # the records were read


def test_planted_fakes_are_reported() -> None:
    planted = (
        "```bash\n"
        "python report.py logs/ --made-up-flag\n"
        "MADE_UP_SETTING=1 sbatch slurm-scripts/1.c4-preprocess.sbatch\n"
        "make made-up-target\n"
        "```\n"
        "`python -m preprocessing --out-root x --made-up-option y`\n"
        "See [nowhere](docs/no-such-page.md) and [no heading](docs/report.md#no-such-heading).\n"
        "## report.json\n\n| field | meaning |\n|---|---|\n| `made_up_field` | nothing |\n"
    )
    flags = flag_problems(planted)
    assert any("--made-up-flag" in p and "report.py" in p for p in flags), flags
    assert any("--made-up-option" in p and "preprocessing" in p for p in flags), flags
    assert any("made-up-target" in p for p in make_target_problems(planted))
    assert any("MADE_UP_SETTING" in p for p in assignment_problems(planted))
    links = link_problems(README, planted)
    assert any("no-such-page.md" in p for p in links) and any("#no-such-heading" in p for p in links), links
    assert any("made_up_field" in p for p in report_field_problems(planted))
    # and the real ones pass the same checks
    assert flag_problems("`python report.py logs/ --jobs 1`") == []
    assert make_target_problems("`make check`") == []


def test_the_renamed_fields_table_is_the_records_renames() -> None:
    """docs/report.md's "Renamed fields" lists every rename report.json writes both names of, and only those."""
    text = (REPO_ROOT / "docs" / "report.md").read_text()
    start = text.index("## Renamed fields")
    end = text.find("\n## ", start + 1)
    rows = re.findall(r"^\| `([^`]+)`[^|]* \| `([^`]+)` \|", text[start : end if end > 0 else len(text)], re.MULTILINE)
    fields = {(new.rpartition(".")[2], old.rpartition(".")[2]) for new, old in rows if not new.startswith("--")}
    assert fields == set(report_records.RENAMED_FIELDS.items())
    assert ("--workers (report.py)" in dict(rows) or any(n.startswith("--workers") for n, _ in rows)) and flag_problems(
        "`python report.py logs/ --workers 1 --jobs 1`"
    ) == []


def test_the_figure_list_of_docs_report_md_is_the_table_of_figures() -> None:
    """docs/report.md's "Figures" is `test_case.report.figures.markdown_table()`, pasted as it prints."""
    assert markdown_table() in (REPO_ROOT / "docs" / "report.md").read_text()
