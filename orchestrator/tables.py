"""Plain-text tables, drawn by rich: columns two spaces apart, a dashed rule under the header,
no colour and no wrapping, so the output reads the same in a terminal, a pipe or a log."""
from __future__ import annotations

import io
from typing import Sequence

from rich.box import Box
from rich.console import Console
from rich.table import Table

# rich's box parts, a line each (top, head, head rule, mid, row, foot rule, foot, bottom): only
# the head rule is drawn, in ASCII dashes
PLAIN = Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def plain(head: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 0) -> str:
    table = Table(box=PLAIN, show_edge=False, pad_edge=False, padding=(0, 1, 0, 1), collapse_padding=True)
    for name in head:
        table.add_column(name, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    console = Console(file=io.StringIO(), width=100_000, color_system=None, highlight=False, emoji=False,
                      markup=False, soft_wrap=False)
    console.print(table)
    return "\n".join(" " * indent + line.rstrip() for line in console.file.getvalue().splitlines())
