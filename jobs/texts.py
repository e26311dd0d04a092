"""Whether a stored or file text can be embedded: the one check the bulk sources, the row preparation
and the migration's verification share."""

from __future__ import annotations

import math
from typing import Any


def validate_text(value: Any, issue: str = "") -> tuple[str, str]:
    """(text, error): error is empty when the text can be embedded; ``issue`` is an earlier verdict."""
    if issue:
        return "", issue
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "", "undecodable text (invalid UTF-8)"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", "missing text"
    if not isinstance(value, str):
        return "", f"non-string text ({type(value).__name__})"
    if not value.strip():
        return "", "blank text"
    return value, ""
