"""Text that people read back (names, labels): which characters it may not hold.

Patterns spell their character classes out (no \\s, no \\p{...}): clients check
them with JavaScript's regex engine, which disagrees with Python's.
"""

from __future__ import annotations

import unicodedata

# Control characters (C0, DEL, C1), the bidirectional overrides and isolates
# that make text display in another order than it is stored, and the BOM.
CONTROL = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufeff"
# Spaces, zero-width and filler characters, joiners, variation selectors and
# directional marks: allowed in a name, but they do not make it visible.
BLANK = (
    r"\x20\xa0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f"
    r"\u2000-\u200f\u2028\u2029\u202f\u205f\u2060-\u2065\u2800\u3000\u3164"
    r"\ufe00-\ufe0f\uffa0"
)
# Not in a plain label: CONTROL, and every other format character and the
# line and paragraph separators of the Basic Multilingual Plane (a pattern
# clients can check; `plain` also refuses those beyond it, such as tags).
NOT_PLAIN = (
    rf"{CONTROL}\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    r"\u200b-\u200f\u2028\u2029\u2060-\u2064\u206a-\u206f\ufff9-\ufffb"
)
# Not in any text people read back (names and descriptions alike): CONTROL,
# the line and paragraph separators (a line ends with "\n"), and the
# noncharacters of the Basic Multilingual Plane (`readable` also refuses
# those beyond it, and the tag characters, which hide text in a plane of
# their own).
UNREADABLE = rf"{CONTROL}\u2028\u2029\ufdd0-\ufdef\ufffe\uffff"
# The embeddings, overrides and isolates, and the BOM (as in CONTROL).
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)
# The tag characters (U+E0000 to U+E007F).
TAGS = range(0xE0000, 0xE0080)
# The Unicode categories a plain label may not hold: controls (Cc: C0, DEL,
# C1 with NEL), format characters (Cf: directional marks, embeddings,
# overrides and isolates, zero-width characters, the BOM, tags), and line
# and paragraph separators (Zl, Zp).
NOT_PLAIN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def plain(text: str) -> str:
    """`text`, if it holds no control, format or separator character; else a
    ValueError naming the first one by its code point (a pydantic validator:
    the error names the field)."""
    for character in text:
        if unicodedata.category(character) in NOT_PLAIN_CATEGORIES:
            raise ValueError(
                f"U+{ord(character):04X} is a control, format or line "
                "separator character, which may not appear here."
            )
    return text


def readable(text: str, allowed: str = "") -> str:
    """`text`, if it holds no character of UNREADABLE, tag or noncharacter in
    any plane (control characters in `allowed` excepted); else a ValueError
    naming the first one by its code point (a pydantic validator)."""
    for character in text:
        if character in allowed:
            continue
        code = ord(character)
        if (
            unicodedata.category(character) in {"Cc", "Zl", "Zp"}
            or code in TAGS
            or 0xFDD0 <= code <= 0xFDEF
            or code & 0xFFFE == 0xFFFE
            or character in BIDI_CONTROLS
        ):
            raise ValueError(
                f"U+{code:04X} is a control, tag, separator or noncharacter, "
                "which may not appear here."
            )
    return text


def readable_lines(text: str) -> str:
    """`readable`, with line breaks and tabs allowed (free text)."""
    return readable(text, allowed="\t\n\r")
