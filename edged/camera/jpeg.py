"""JPEG facts without decoding: the daemon reports what it sent (size in pixels and bytes) and
never needs an image library for that."""

from __future__ import annotations

SOI = b"\xff\xd8"
# Start-of-frame markers (baseline, extended, progressive, lossless, ...): not DHT (C4),
# JPG (C8) or DAC (CC), which share the C0-CF range.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, or None if ``data`` is not a
    JPEG whose header can be read."""
    if not data.startswith(SOI):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                      # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers: no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:        # start of scan before any frame header
            return None
        i += 2 + length
    return None
