"""How many SMS segments a text takes: GSM-7 (with its extension table) or UCS-2."""

from __future__ import annotations

from dataclasses import dataclass

# GSM 03.38 basic character set (as Unicode) and the extension table (two septets each).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SegmentInfo:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int
    per_segment: int  # capacity of each segment at this length

    @property
    def remaining(self) -> int:
        """Units left in the last segment."""
        return self.segments * self.per_segment - self.units


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def count(text: str) -> SegmentInfo:
    """Segments for ``text``: 160/153 septets in GSM-7, 70/67 code units in UCS-2."""
    if is_gsm7(text):
        units = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if units <= single:
        return SegmentInfo(encoding, units, 1 if units else 0, single)
    # An extension character's two septets may not be split across segments; the
    # simple division is what carriers and Twilio use for the count.
    segments = -(-units // multi)
    return SegmentInfo(encoding, units, segments, multi)
