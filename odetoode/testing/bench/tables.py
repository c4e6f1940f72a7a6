"""Ratio tables: each row's figures beside their ratio to the row's floor (absolute numbers on a shared machine are
noisy; ratios to a floor measured in the same run are not)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from odetoode.testing.bench.timing import Timing

Figure = Literal["p50_us", "p90_us", "p99_us", "mean_us", "server_cpu_us"]


@dataclass(frozen=True)
class Column:
    """One column: its header, its cell for ``(row, the row's floor)``, right-aligned in ``width`` with ``digits``
    decimals; the header in ``header_width`` if given (0: as it is)."""

    header: str
    cell: Callable[[Timing, Timing], float]
    width: int = 9
    digits: int = 1
    header_width: int | None = None


def value(figure: Figure, header: str, width: int = 9) -> Column:
    """The row's own ``figure``."""
    return Column(header, lambda row, floor: getattr(row, figure), width)


def ratio(figure: Figure, header: str, width: int = 13, to: Timing | None = None) -> Column:
    """The row's ``figure`` over its floor's (or ``to``'s)."""
    return Column(header, lambda row, floor: getattr(row, figure) / getattr(to or floor, figure), width, 2)


def ratio_table(
    rows: Sequence[tuple[Timing, Timing]], columns: Sequence[Column], *, name_width: int, title: str | None = None
) -> None:
    """Prints ``rows`` (``(row, its floor)``) under a header line, after a blank line (or after ``title``)."""
    header = "".join(f"{c.header:>{c.width if c.header_width is None else c.header_width}}" for c in columns)
    lead = "\n" if title is None else f"\n{title}\n"
    print(f"{lead}{'':<{name_width}}{header}")
    for row, floor in rows:
        print(f"{row.name:<{name_width}}" + "".join(f"{c.cell(row, floor):>{c.width}.{c.digits}f}" for c in columns))


def print_table(title: str, rows: list[Timing], floor: Timing, reference: Timing | None = None) -> None:
    """Prints p50/p99 with each row's p50 ratio to the floor (and to ``reference`` if given)."""
    columns = [value("p50_us", "p50 us", 10), value("p99_us", "p99 us", 10), ratio("p50_us", "x floor", 10)]
    if reference:
        columns.append(replace(ratio("p50_us", "", 13, to=reference), header=f"  x {reference.name:>10}",
                               header_width=0))  # fmt: skip
    ratio_table([(row, floor) for row in rows], columns, name_width=28, title=title)
