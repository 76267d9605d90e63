"""Write a benchmark's table into its own section of ``benchmarks/README.md``.

Each benchmark owns the text between ``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->``; other
sections are left untouched, so benchmarks can be re-run one at a time.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render rows as a GitHub markdown table."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Where and when a figure was measured."""
    import os

    return f"_Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}._"


def load_note(load_before: float | None = None) -> str:
    """A sentence stating the measured machine load, so a figure is never labelled 'shared' or 'idle' by hand."""
    import os

    now = os.getloadavg()[0]
    before = f"{load_before:.1f} at the start, " if load_before is not None else ""
    busy = max(now, load_before or 0.0) > 0.5 * (os.cpu_count() or 1)
    verdict = ("other work was running, so these figures are pessimistic and vary run to run" if busy
               else "the machine was otherwise idle")
    return f"1-min load average {before}{now:.1f} at the end on {os.cpu_count()} cores: {verdict}."


def write_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) section ``name`` of benchmarks/README.md and print it."""
    section = f"<!-- BEGIN {name} -->\n## {title}\n\nReproduce: `{command}`\n\n{machine_line()}\n\n{body.strip()}\n<!-- END {name} -->"
    print(section)
    text = README.read_text() if README.exists() else "# Benchmarks\n\nFigures measured by the scripts in this folder.\n"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    README.write_text(text)
