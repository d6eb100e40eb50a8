"""CIFAR-10 class names, in CIFAR-10's order, and the names the original app sends."""

from __future__ import annotations

from mobilegen.errors import MobileGenError

CIFAR10_LABELS: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# The original Android app offers short names; "auto" is its word for automobile.
ALIASES: dict[str, str] = {"auto": "automobile", "car": "automobile", "plane": "airplane"}
UNCONDITIONAL = -1


def parse_label(value: str | int, labels: tuple[str, ...] = CIFAR10_LABELS) -> int:
    """A class name, alias or index -> class index. 'none' or -1 means unconditional."""
    text = str(value).strip().lower()
    if text in ("none", "-1", "uncond", "unconditional"):
        return UNCONDITIONAL
    if text.isdigit() and int(text) < len(labels):
        return int(text)
    text = ALIASES.get(text, text)
    if text in labels:
        return labels.index(text)
    allowed = ", ".join(labels)
    raise MobileGenError(
        f"unknown label {value!r}; allowed: {allowed} (or an index 0-{len(labels) - 1}, "
        f"the aliases {', '.join(ALIASES)}, or 'none' for unconditional)"
    )
