"""Text from outside (a message, a header) made safe to show: one line, bounded."""

from __future__ import annotations

REASON_LIMIT = 1000  # characters: what a reason (a RabbitMQ header, a Redis field) may hold


def bounded(text: object, limit: int = REASON_LIMIT) -> str:
    """`text` with every control character escaped, cut to about `limit` characters: safe in
    one log line, a header, or a terminal."""
    text = str(text)
    cut = len(text) > limit
    shown = text[:limit].translate(_ESCAPES)
    if not shown.isprintable():  # rare: the costly path only for unusual characters
        # (lone surrogates too, which no header or terminal could encode)
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if len(shown) > limit:
        shown, cut = shown[:limit], True
    return f"{shown}... ({len(text)} characters)" if cut else shown


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"})
