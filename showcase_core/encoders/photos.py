"""Reading and decoding photos for CLIP: any image format PIL reads, to 8-bit RGB at the model's size, with limits.

Every failure is a reason code (showcase_core.encoders.embed.EMBED_REASONS), never an exception out of a batch: one
hostile file (a decompression bomb, a text file named .jpg, a truncated upload) is quarantined and the job goes on.
Baseline and progressive JPEGs in YCbCr or greyscale (nearly every photo) decode through simplejpeg when it is
installed: the same libjpeg-turbo at the same scale as PIL's draft mode, so the very same pixels
(tests/unit/test_photos.py compares them), without PIL's per-photo overhead (a 96 px photo: 80 -> 34 us; a 500 x 375
one: 726 -> 545 us). Anything else, and any JPEG simplejpeg refuses, goes through PIL, which decides the reason code of
a broken photo. The resize is torch's antialiased bicubic on uint8, PIL's kernel (open_clip's preprocessing): within 2
levels of PIL resizing across then down (Pillow 13 picks the order of its two passes itself; on the world's photos
0.2% of the values differ, by 1), and 2-7x faster (96 -> 64 px: 77 -> 25 us; a 640 x 480 JPEG decoded at half
scale, 320 x 240 -> 224 px: 0.76 -> 0.31 ms; a 640 x 480 PNG: 1.9 -> 0.27 ms).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # PIL decodes the same pixels, a little slower (a GPU machine's own environment may lack it)
    simplejpeg = None

from ..store import filesystem_for, uri_path

# what one photo may be before it is decoded (embed's --max-photo-bytes and --max-photo-pixels): a decompression bomb
# (a few KB of PNG declaring 100,000 x 100,000 pixels) is refused from its header, before any pixel is decoded, and a
# file over the byte limit is not read (its size comes with opening it), so one decoding thread holds at most the
# byte limit plus one photo of the pixel limit (x4 bytes) however hostile the folder is
MAX_PHOTO_BYTES = 32 * 2**20
MAX_PHOTO_PIXELS = 64_000_000
MAX_ASPECT = 16  # a photo longer than 16 times its shorter side is resized from its centre 16:1 (resize_and_crop)


class PhotoError(ValueError):
    """A photo that cannot be embedded: ``reason`` is one of showcase_core.encoders.embed.EMBED_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB: 16-bit and 32-bit greyscale scaled (not clipped) to 8 bits, transparency
    composited on white, CMYK, palette and greyscale converted. An animation's current frame (the first, as opened)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        values = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") or float(values.max(initial=0)) > 255 else 255.0
        im = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB")


def decode_and_resize(data: bytes, size: int, max_pixels: int = MAX_PHOTO_PIXELS) -> np.ndarray:
    """Image bytes (JPEG, PNG, WebP, GIF, ...) -> uint8 [size, size, 3]: RGB (``to_rgb``), shorter side resized to
    ``size``, centre crop (CLIP style).

    Raises PhotoError: ``not_an_image`` (no image format recognised), ``too_many_pixels`` (width x height over
    ``max_pixels``, from the header alone), ``truncated``, ``undecodable`` (any other decoding failure).
    """
    rgb = _decode_jpeg(data, size, max_pixels)
    return resize_and_crop(_decode_with_pil(data, size, max_pixels) if rgb is None else rgb, size)


def resize_and_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: shorter side to ``size`` (antialiased bicubic, PIL's kernel), centre
    crop. torch's aten op, not ``F.interpolate``, whose argument checks cost as much as a small photo's resize. torch
    is imported on first use (a decoding worker that never resizes does not load it).

    A photo longer than ``MAX_ASPECT`` times its shorter side is first cut to its centre ``MAX_ASPECT``:1 (in its own
    pixels; the centre crop keeps less than that): resized whole, a 1,000,000 x 1 photo would take 150 GB at 224 px.
    So the resize holds at most ``MAX_ASPECT`` x size x size x 3 bytes; a photo within the ratio keeps its pixels."""
    import torch

    rgb = _centre_of_long_photo(rgb)
    h, w = rgb.shape[:2]
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = torch.ops.aten._upsample_bicubic2d_aa(torch.from_numpy(rgb).permute(2, 0, 1)[None], [nh, nw], False)
    left, top = (nw - size) // 2, (nh - size) // 2
    return resized[0, :, top:top + size, left:left + size].permute(1, 2, 0).numpy().copy()


def _centre_of_long_photo(rgb: np.ndarray) -> np.ndarray:
    """The centre ``MAX_ASPECT``:1 of a longer photo (its long side cut by an even count of pixels, so the centre
    stays where it was), contiguous; any other photo as it is."""
    h, w = rgb.shape[:2]
    keep = MAX_ASPECT * min(h, w)
    if max(h, w) <= keep:
        return rgb
    keep += (max(h, w) - keep) % 2
    cut = (max(h, w) - keep) // 2
    return np.ascontiguousarray(rgb[cut:cut + keep] if h > w else rgb[:, cut:cut + keep])


def _draft_scale(width: int, height: int, size: int) -> int:
    """The reduction PIL's JPEG draft mode picks for a shorter side of ``size``: 8, 4, 2 or 1 (a smaller photo)."""
    return next((s for s in (8, 4, 2) if min(width // size, height // size) >= s), 1)


def _decode_jpeg(data: bytes, size: int, max_pixels: int) -> np.ndarray | None:
    """A YCbCr or greyscale JPEG through simplejpeg, as uint8 RGB [H, W, 3] at PIL's draft scale; None for anything
    else (not a JPEG, CMYK, over ``max_pixels``, corrupt or truncated: PIL's path then decodes it or says why not)."""
    if simplejpeg is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or not width or not height or width * height > max_pixels:
            return None
        scale = _draft_scale(width, height, size)
        shape = (-(-height // scale), -(-width // scale), 3)
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=shape[0], min_width=shape[1],
                                        min_factor=scale)
    except ValueError:
        return None
    return pixels if pixels.shape == shape else None


def _decode_with_pil(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Any format PIL reads -> uint8 RGB [H, W, 3] (a JPEG at its draft scale); PhotoError with a reason otherwise."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise PhotoError("not_an_image", "no image format recognised in the bytes") from None
    except Image.DecompressionBombError as e:
        raise PhotoError("too_many_pixels", _first_line(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoError("undecodable", _first_line(e)) from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise PhotoError("too_many_pixels", f"{w} x {h} pixels is over the limit of {max_pixels:,}")
        try:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the photo is much larger
            rgb = to_rgb(im)
        except OSError as e:
            reason = "truncated" if "truncated" in str(e) else "undecodable"
            raise PhotoError(reason, _first_line(e)) from None
        except (SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise PhotoError("undecodable", _first_line(e)) from None
    if not rgb.size[0] or not rgb.size[1]:
        raise PhotoError("undecodable", f"{rgb.size[0]} x {rgb.size[1]} pixels")
    return np.array(rgb)  # writable, as torch wants it


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def read_photo(uri: str, size: int, filesystems: dict, max_bytes: int = MAX_PHOTO_BYTES,
               max_pixels: int = MAX_PHOTO_PIXELS) -> tuple[np.ndarray | None, str, str]:
    """Read and ``decode_and_resize`` one photo (local or s3://): (pixels, "", "") or (None, reason, detail) with a
    reason of showcase_core.encoders.embed.EMBED_REASONS. A file over ``max_bytes`` is not read (``too_large``).
    ``filesystems`` caches one filesystem per kind of URI.

    The file's size comes with opening it (a stat, or S3's HEAD, which opening a stream makes too), so a photo is
    one read of exactly its bytes: reading in chunks of 1 MiB allocated and freed a buffer per photo, 5% of the embed
    actor's samples next to the model's threads (py-spy, tests/perf/embed.py --size large)."""
    kind, path = uri_path(uri)
    if kind not in filesystems:
        filesystems[kind] = filesystem_for(uri)[0]
    try:
        with filesystems[kind].open_input_file(path) as f:
            nbytes = f.size()
            if nbytes > max_bytes:
                return None, "too_large", f"over the limit of {max_bytes:,} bytes"
            data = f.read(nbytes)
    except FileNotFoundError:
        return None, "photo_missing", f"no file at {uri}"
    except OSError as e:
        return None, "read_error", str(e).splitlines()[0][:200]
    try:
        return decode_and_resize(data, size, max_pixels), "", ""
    except PhotoError as e:
        return None, e.reason, str(e)[:200]


def read_photos(uris: list[str], size: int) -> tuple[np.ndarray, list[int], list[str]]:
    """Read and decode photos. Returns (uint8 [n_ok, size, size, 3], ok indices, "uri: detail" of the others)."""
    pixels, ok, errors = [], [], []
    filesystems: dict = {}
    for i, uri in enumerate(uris):
        px, _, detail = read_photo(uri, size, filesystems)
        if px is None:
            errors.append(f"{uri}: {detail}")
        else:
            pixels.append(px)
            ok.append(i)
    empty = np.zeros((0, size, size, 3), np.uint8)
    return (np.stack(pixels) if pixels else empty), ok, errors
