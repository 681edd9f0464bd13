"""Checking that a large request body is UTF-8 without decoding it whole.

``str(body, "utf-8")`` builds the whole text: up to 4 bytes a character (one
character beyond the BMP makes an 8 MiB body a 32 MiB string), held by nobody and
counted in no budget. Here the bytes are decoded a slice at a time and each slice's
text is let go at once, so the check holds at most one slice's text.
"""

from __future__ import annotations

import codecs

#: bytes decoded at a time (the text of one slice, up to 4 times as large, is held briefly)
SLICE = 256 * 1024


def is_utf8(data: bytes | memoryview) -> bool:
    """True when ``data`` is valid UTF-8 (what ``str(data, "utf-8")`` accepts)."""
    view = memoryview(data)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for start in range(0, len(view), SLICE):
            decoder.decode(view[start : start + SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True
