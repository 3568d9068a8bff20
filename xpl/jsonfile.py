"""Reading the json files users point XPL at, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xpl.errors import DataError


def read_json(path: str | Path, what: str) -> Any:
    """Parsed content of `path`; DataError "<path>: <what> not found / not valid JSON / cannot read"."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc
