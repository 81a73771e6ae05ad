"""What must not leave ddsync as written: the one home of redaction.

* :func:`redact` removes credentials (``Authorization`` values, ``Basic``/``Bearer`` tokens,
  ``password=``-style pairs, URL user-info) and given exact secrets: for dead letters and
  anything else that travels to an operator.
* :func:`redact_emails` replaces email addresses by ``{email}``: log lines are read by more
  people than the topics that hold the addresses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "***"

# Order matters: the Authorization rule consumes the whole value (scheme and credentials) before
# the bare "Basic <token>" rule would leave the scheme visible.
_REDACTIONS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # Authorization: Basic xxx / "Authorization": "Bearer xxx" / authorization=xxx
    (
        re.compile(r"""(?i)(\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?)[^"'\r\n,;}]+"""),
        r"\1" + REDACTED,
    ),
    # A bare credential after its scheme. The scheme must be capitalised and the token look
    # encoded (a digit, +/=, or a lower-to-upper change), so prose like "basic validation" stays.
    (
        re.compile(
            r"\b(Basic|Bearer|Digest)\s+"
            r"(?=[A-Za-z0-9+/=._~-]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9+/=._~-]{8,}"
        ),
        r"\1 " + REDACTED,
    ),
    # password=..., "passwd": "...", secret: ..., token=..., api_key=...
    (
        re.compile(
            r"""(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"""
            r"""["']?\s*[:=]\s*["']?)[^"'\s&,;}]+"""
        ),
        r"\1" + REDACTED,
    ),
    # Credentials in a URL: https://user:pass@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^/\s@]+@"), r"\1:" + REDACTED + "@"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``.

    Strips ``Authorization`` header values, ``Basic``/``Bearer`` credentials, ``password=``-style
    pairs (also ``secret``, ``token``, ``api_key``) and URL user-info passwords. ``secrets`` are
    exact values to remove as well (e.g. the connector's password), for what no pattern can spot.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# \w is Unicode-aware: internationalised local parts and domains are personal data too.
_EMAIL = re.compile(r"[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")


def redact_emails(text: str) -> str:
    """``text`` with every email address replaced by ``{email}``."""
    return _EMAIL.sub("{email}", text) if "@" in text else text
