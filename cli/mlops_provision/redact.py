"""Keep secrets out of everything we print or keep: known values and URI passwords."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "********"
_URI_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _URI_PASSWORD.sub(r"\1:" + MASK + "@", text)
