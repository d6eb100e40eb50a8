"""CIFAR-10 class names, in CIFAR-10's order, and the names the original app sends."""

from __future__ import annotations

from mobilegen.errors import MobileGenError

CIFAR10_LABELS: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# The original Android app offers short names; "auto" is its word for automobile.
ALIASES: dict[str, str] = {"auto": "automobile", "car": "automobile", "plane": "airplane"}
UNCONDITIONAL = -1


def ascii_int(text: str) -> int | None:
    """The integer spelled in ASCII digits (an optional leading '-'), else None.

    str.isdigit() also accepts other scripts' digits: int() then rejects '²' and reads
    '٣' (Arabic-Indic three) as 3. Every integer typed as text goes through here.
    """
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    return int(text) if digits.isascii() and digits.isdigit() else None


def parse_label(value: str | int, labels: tuple[str, ...] = CIFAR10_LABELS) -> int:
    """A class name, alias or index -> class index. 'none' or -1 means unconditional."""
    text = str(value).strip().lower()
    if text in ("none", "-1", "uncond", "unconditional"):
        return UNCONDITIONAL
    index = ascii_int(text)
    if index is not None and 0 <= index < len(labels):
        return index
    text = ALIASES.get(text, text)
    if text in labels:
        return labels.index(text)
    allowed = ", ".join(labels)
    raise MobileGenError(
        f"unknown label {value!r}; allowed: {allowed} (or an index 0-{len(labels) - 1}, "
        f"the aliases {', '.join(ALIASES)}, or 'none' for unconditional)"
    )
