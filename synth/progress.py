"""The one layout of synth's long-running progress bars (generating images, encoding latents).

label | bar | done/total | a per-run text column | elapsed | remaining: built here so the two bars read the same
and rich's column imports stand in one place; rich is imported only when a bar is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress


def progress_bar(label: str, detail: str, *, eta_label: str | None = None, **options: Any) -> "Progress":
    """``detail`` is a rich text column template (e.g. ``"{task.fields[rate]}"``); ``options`` go to ``Progress``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    eta = [TextColumn(eta_label)] if eta_label else []
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(detail), TimeElapsedColumn()]
    return Progress(*columns, *eta, TimeRemainingColumn(), **options)
