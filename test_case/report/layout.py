"""The report's section model and its two text formatters: a `Section` is written once (by
`test_case.report.sections`) and formatted for the console (`console_text`) or for report.md
(`markdown_text`).

A section has a report.md heading, the lines the console prints (or the run table, aligned) and a
report.md body of blocks: paragraphs (``str``), `Table`, `Bullets` and `Code`; without a body of its
own, report.md lists the console's lines. Nothing here knows what a section says.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """A table of text cells: aligned columns on the console, a pipe table in report.md."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Bullets:
    """A markdown list (an empty one is a blank line)."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Code:
    """A fenced block of lines, as the console prints them."""

    lines: tuple[str, ...]


Block = str | Table | Bullets | Code


@dataclass(frozen=True)
class Section:
    """One section of the report (`key` names it for the console's order)."""

    key: str
    title: str | None = None  # report.md's ``## title``; None: none
    console: tuple[str | Table, ...] = ()  # what the console prints: lines, or a table aligned
    body: tuple[Block, ...] | None = None  # report.md's blocks; None: the console's lines as a list

    def blocks(self) -> tuple[Block, ...]:
        """report.md's blocks (none: the section is left out of report.md)."""
        if self.body is not None:
            return self.body
        lines = tuple(line for line in self.console if isinstance(line, str))
        return (Bullets(lines),) if lines else ()


def aligned(table: Table) -> list[str]:
    """The console's table: the first column left-aligned, the others right-aligned, a rule under the header."""
    rows = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.header))]
    out = io.StringIO()
    for n, row in enumerate(rows):
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        out.write("  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    return out.getvalue().splitlines()


def _markdown_lines(block: Block) -> list[str]:
    if isinstance(block, str):
        return [block]
    if isinstance(block, Table):
        head = "| " + " | ".join(block.header) + " |"
        rule = "|" + "|".join("---" for _ in block.header) + "|"
        return [head, rule, *("| " + " | ".join(row) + " |" for row in block.rows)]
    if isinstance(block, Bullets):
        return [f"- {item}" for item in block.items]
    return ["```", *block.lines, "```"]


def markdown_text(title: str, sections: Iterable[Section]) -> str:
    """report.md: ``# title``, then each section with blocks: its heading, each block and a blank line."""
    lines = [f"# {title}", ""]
    for section in sections:
        if not (blocks := section.blocks()):
            continue
        if section.title is not None:
            lines += [f"## {section.title}", ""]
        for block in blocks:
            lines += [*_markdown_lines(block), ""]
    return "\n".join(lines)


def console_text(sections: Iterable[Section], order: Sequence[str]) -> str:
    """The console: the sections' lines in ``order`` (by key; sections not named are not printed)."""
    by_key = {s.key: s for s in sections}
    lines: list[str] = []
    for key in order:
        for item in by_key[key].console if key in by_key else ():
            lines += aligned(item) if isinstance(item, Table) else [item]
    return "".join(line + "\n" for line in lines)
