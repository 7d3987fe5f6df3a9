"""The one reader of a user's CSV (label files, manifests, lists of images to predict).

Why one reader: pandas reads several wrong files without a word, and each caller used to meet that alone —
a 0-byte file is a bare ``EmptyDataError`` traceback, a ``;``-separated file (a European spreadsheet's
"CSV") becomes one column and surfaces as "missing columns" with no hint, and a column that appears twice
in the header is silently renamed ``Mass.1`` so the first copy wins. Each is one ``error:`` line here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from synth.errors import UserError

#: Separators a spreadsheet writes instead of ``,`` when it saves "CSV" (locale-dependent).
OTHER_SEPARATORS: tuple[str, ...] = (";", "\t")

_PARSE_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError)


def read_csv_file(path: str | os.PathLike, where: str, expected: str, **read_kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv(path, compression="infer", **read_kwargs)``, or one :class:`UserError` naming the fix.

    ``where`` starts each message (``--labels x.csv``); ``expected`` is what the file should be (the fix when
    it cannot be parsed at all). A file-system error (permission, disk) stays an ``OSError`` for
    :func:`synth.errors.describe_os_error`; a damaged ``.gz`` (an ``OSError`` without ``errno``) is bad input.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: the file is empty (0 bytes); {expected}")
    try:
        df = pd.read_csv(path, compression="infer", **read_kwargs)
        header = pd.read_csv(path, compression="infer", header=None, nrows=1, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{where}: no header row (the file holds no data); {expected}") from None
    except _PARSE_ERRORS as err:
        raise UserError(f"{where}: cannot parse as CSV ({err}); {expected}") from None
    except OSError as err:
        if err.errno is not None:
            raise
        raise UserError(f"{where}: cannot parse as CSV ({err}); {expected}") from None
    names = [str(n).strip() for n in header.iloc[0]] if len(header) else []
    if len(names) == 1:
        for sep in OTHER_SEPARATORS:
            if sep in names[0]:
                shown = "tab" if sep == "\t" else repr(sep)
                raise UserError(
                    f"{where}: the file looks {shown}-separated (one column {names[0][:60]!r}); save it "
                    "comma-separated (in a spreadsheet: CSV with ',' as the field delimiter)"
                )
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise UserError(
                f"{where}: column {name!r} appears more than once in the header; keep one of them "
                "(which copy holds the right values cannot be guessed)"
            )
        seen.add(name)
    return df
