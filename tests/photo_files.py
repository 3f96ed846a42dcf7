"""Photo files the embed path must handle: valid ones in unusual formats, and hostile ones (bytes only, no library)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encoded(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **options)
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (80, 60), (0, 255, 255, 0)), "JPEG")  # red in CMYK


def grey16_png(level: int = 32768) -> bytes:
    """A 16-bit greyscale PNG at ``level`` of 65535."""
    return encoded(Image.fromarray(np.full((40, 50), level, np.uint16)), "PNG")


def transparent_png() -> bytes:
    """RGBA: fully transparent black on the left half, opaque blue on the right."""
    pixels = np.zeros((40, 40, 4), np.uint8)
    pixels[:, 20:] = (0, 0, 255, 255)
    return encoded(Image.fromarray(pixels, "RGBA"), "PNG")


def webp() -> bytes:
    return encoded(Image.new("RGB", (64, 48), (0, 160, 0)), "WEBP")


def animated_gif() -> bytes:
    """Two frames: red, then blue (the first frame is the photo)."""
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header declaring width x height RGB pixels, with one tiny deflate stream: a few hundred
    bytes that would decode to 30 GB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    """A well-formed 10 x 10 PNG header whose pixel data is not a deflate stream."""
    header = struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"not zlib") + _chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG")
    return data[:len(data) // 3]


def text_file() -> bytes:
    return b"this is a text file someone named .jpg\n"
