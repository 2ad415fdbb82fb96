"""Bodies crafted to make a JSON reader work hard, at any size; shared by tests and bench/.

Each is built to hit one known weakness of a naive reader: regex backtracking over
unterminated or escape-heavy strings (the relay's old lenient re-read took 5.4 s on 52 KB
of escaped quotes, 22 s on 104 KB), deep nesting, many small objects, long numbers, many
leading-zero repairs, and many ``"id"`` members for the signature's body-id scan.
"""

from __future__ import annotations


def _fill(prefix: bytes, unit: bytes, size: int, suffix: bytes = b"") -> bytes:
    count = max(0, (size - len(prefix) - len(suffix)) // max(1, len(unit)))
    return prefix + unit * count + suffix


def crafted_bodies(size: int) -> dict[str, bytes]:
    """Hostile bodies of about ``size`` bytes, by name."""
    return {
        "quotes": b'"' * size,
        "escaped-quotes": _fill(b'"', b'\\"', size),
        "escaped-quotes-in-object": _fill(b'{"a":"', b'\\"', size),
        "unterminated-string": _fill(b'{"caller_id": 01, "s": "', b"a", size),
        "quote-pairs-after-a-leading-zero": _fill(b'{"caller_id": 01,', b'"",', size),
        "leading-zeros": _fill(b"[", b"01,", size, b"01]"),
        "nested-arrays": b"[" * size,
        "nested-objects": _fill(b"", b'{"a":', size),
        "empty-lists": _fill(b"[", b"[],", size, b"[]]"),
        "many-keys": _fill(b"{", b'"k":0,', size, b'"k":0}'),
        "long-number": b"1" * size,
        "unicode-escapes": _fill(b'"', b"\\u00e9", size, b'"'),
        "id-members": _fill(b"{", b'"id":"', size),
        "id-members-no-colon": _fill(b"", b'"id"', size),
        "fragment-of-members": _fill(b"", b'"a": 01, ', size),
        "backslashes": b"\\" * size,
    }
