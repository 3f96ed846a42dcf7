"""Photo decoding for CLIP: unusual but valid formats are embedded, hostile files get a reason and nothing else."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from showcase_core.encoders import photos
from showcase_core.encoders.embed import EMBED_REASONS, decode_photos
from showcase_core.encoders.photos import PhotoError, decode_and_resize, read_photo
from tests import photo_files


@pytest.mark.parametrize("data, colour", [
    (photo_files.cmyk_jpeg(), (255, 0, 0)),
    (photo_files.webp(), (0, 160, 0)),
    (photo_files.animated_gif(), (255, 0, 0)),  # the first frame, not the blue second one
    (photo_files.grey16_png(32768), (128, 128, 128)),  # scaled from 16 bits, not clipped to white
    (photo_files.grey16_png(1000), (4, 4, 4)),
], ids=["cmyk-jpeg", "webp", "animated-gif", "16-bit-png-mid", "16-bit-png-dark"])
def test_valid_photos_in_other_formats_decode_to_rgb(data, colour):
    px = decode_and_resize(data, 16)
    assert px.shape == (16, 16, 3) and px.dtype == np.uint8
    assert np.abs(px.reshape(-1, 3).mean(0) - colour).max() < 12, px.reshape(-1, 3).mean(0)


def test_transparency_is_composited_on_white():
    px = decode_and_resize(photo_files.transparent_png(), 40)
    assert (px[:, :18] > 245).all()  # transparent black: white, not black
    assert np.abs(px[:, 22:].reshape(-1, 3).mean(0) - (0, 0, 255)).max() < 8


@pytest.mark.parametrize("data, reason", [
    (photo_files.png_bomb(), "too_many_pixels"),  # past PIL's own bomb check too
    (photo_files.png_bomb(9_000, 9_000), "too_many_pixels"),  # 81 M: under PIL's check, over ours
    (photo_files.truncated_jpeg(), "truncated"),
    (photo_files.text_file(), "not_an_image"),
    (b"", "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image"),  # a signature, then garbage: no format reads it
    (photo_files.corrupt_png(), "undecodable"),  # a header PIL reads, pixel data it cannot
], ids=["bomb-10G", "bomb-81M", "truncated", "text", "empty", "png-garbage", "corrupt-png"])
def test_hostile_photos_raise_their_reason_without_decoding(data, reason):
    started = time.monotonic()
    with pytest.raises(PhotoError) as caught:
        decode_and_resize(data, 32)
    assert caught.value.reason == reason and reason in EMBED_REASONS
    assert time.monotonic() - started < 2  # a bomb is refused from its header, not decoded


def test_the_pixel_limit_is_a_setting():
    data = photo_files.webp()  # 64 x 48 = 3,072 pixels
    assert decode_and_resize(data, 16, max_pixels=3072).shape == (16, 16, 3)
    with pytest.raises(PhotoError, match="64 x 48 pixels is over the limit of 3,071"):
        decode_and_resize(data, 16, max_pixels=3071)


def test_read_photo_stops_at_the_byte_limit_and_names_missing_files(tmp_path):
    path = tmp_path / "p.jpg"
    path.write_bytes(photo_files.cmyk_jpeg())
    size = path.stat().st_size
    px, reason, _ = read_photo(str(path), 16, {}, max_bytes=size)
    assert reason == "" and np.array_equal(px, decode_and_resize(path.read_bytes(), 16))
    px, reason, detail = read_photo(str(path), 16, {}, max_bytes=size - 1)
    assert px is None and reason == "too_large" and f"{size - 1:,} bytes" in detail
    assert read_photo(str(tmp_path / "gone.jpg"), 16, {})[1] == "photo_missing"


@pytest.mark.parametrize("threads", [1, 2])  # inline, or a pool
def test_a_batch_with_every_kind_of_file_keeps_every_row(tmp_path, threads):
    files = {"cmyk": photo_files.cmyk_jpeg(), "grey16": photo_files.grey16_png(), "webp": photo_files.webp(),
             "gif": photo_files.animated_gif(), "alpha": photo_files.transparent_png(),
             "bomb": photo_files.png_bomb(), "cut": photo_files.truncated_jpeg(), "text": photo_files.text_file()}
    for name, data in files.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)  # every name ends .jpg, as ingest expects
    names = [*files, "missing"]
    out = decode_photos({"id": np.array(names, object),
                         "uri": np.array([str(tmp_path / f"{n}.jpg") for n in names], object)}, 16, threads=threads)
    assert dict(zip(names, out["reason"])) == {
        "cmyk": "", "grey16": "", "webp": "", "gif": "", "alpha": "", "bomb": "too_many_pixels", "cut": "truncated",
        "text": "not_an_image", "missing": "photo_missing"}
    assert (out["pixels"][5:] == 0).all() and (out["pixels"][:5].reshape(5, -1).max(1) > 0).all()


def jpeg_bytes(width: int, height: int, grey: bool, subsampling: int, progressive: bool, seed: int) -> bytes:
    """A photo-like JPEG: gradients with noise (smooth areas and edges)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 55, height)[:, None, None]
    im = Image.fromarray(np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    (im.convert("L") if grey else im).save(buf, "JPEG", quality=85, subsampling=subsampling, progressive=progressive)
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 900), height=st.integers(1, 900), size=st.sampled_from([16, 64, 224]), grey=st.booleans(),
       subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(), seed=st.integers(0, 2**16))
def test_simplejpeg_decodes_the_very_pixels_of_pils_draft_mode(width, height, size, grey, subsampling, progressive,
                                                                seed):
    data = jpeg_bytes(width, height, grey, subsampling, progressive, seed)
    fast = photos._decode_jpeg(data, size, photos.MAX_PHOTO_PIXELS)
    assert fast is not None  # taken by the fast path
    slow = photos._decode_with_pil(data, size, photos.MAX_PHOTO_PIXELS)
    assert fast.shape == slow.shape and np.array_equal(fast, slow)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 700), height=st.integers(1, 700), size=st.sampled_from([16, 64, 224]),
       seed=st.integers(0, 2**16))
def test_the_resize_matches_pils_bicubic_resize_and_centre_crop(width, height, size, seed):
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)  # noise: the worst case
    source = photos._centre_of_long_photo(rgb)  # a photo longer than 16:1 is resized from its centre 16:1
    if max(width, height) <= photos.MAX_ASPECT * min(width, height):
        assert source is rgb
    height, width = source.shape[:2]
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # PIL one axis at a time, across then down: Pillow 13 picks the order itself, and the two orders differ by up to
    # 25 levels on noise (each pass clips its overshoot)
    im = Image.fromarray(source).resize((nw, height), Image.BICUBIC).resize((nw, nh), Image.BICUBIC)
    reference = np.asarray(im.crop((left, top, left + size, top + size)))
    ours = photos.resize_and_crop(rgb, size)
    differ = ours.astype(int) - reference
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8 and ours.flags.writeable
    # fixed-point rounding: 0.5% of the values 1 level apart on average, a few % on tiny outputs
    assert np.abs(differ).max() <= 2 and (differ != 0).mean() < 0.05, (np.abs(differ).max(), (differ != 0).mean())


def test_jpegs_the_fast_path_leaves_to_pil_decode_or_fail_as_before(monkeypatch):
    limit = photos.MAX_PHOTO_PIXELS
    for data in (photo_files.cmyk_jpeg(), photo_files.truncated_jpeg(), photo_files.webp()):
        assert photos._decode_jpeg(data, 16, limit) is None
    big = jpeg_bytes(64, 48, False, 2, False, 0)
    assert photos._decode_jpeg(big, 16, 3071) is None  # over the pixel limit: PIL's path names the reason
    with pytest.raises(PhotoError, match="64 x 48 pixels is over the limit of 3,071"):
        decode_and_resize(big, 16, max_pixels=3071)
    with_simplejpeg = decode_and_resize(big, 16)
    monkeypatch.setattr(photos, "simplejpeg", None)  # as on a machine without it
    assert np.array_equal(decode_and_resize(big, 16), with_simplejpeg)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), grey=st.booleans(), progressive=st.booleans())
def test_a_damaged_jpeg_gets_the_same_pixels_or_reason_with_or_without_simplejpeg(data, grey, progressive):
    photo = bytearray(jpeg_bytes(90, 70, grey, 2, progressive, 1))
    for _ in range(data.draw(st.integers(1, 5))):
        photo[data.draw(st.integers(0, len(photo) - 1))] = data.draw(st.integers(0, 255))
    photo = bytes(photo[:data.draw(st.integers(2, len(photo)))])

    def outcome():
        try:
            return decode_and_resize(photo, 32)
        except PhotoError as e:
            return e.reason

    fast = outcome()
    saved, photos.simplejpeg = photos.simplejpeg, None
    try:
        slow = outcome()
    finally:
        photos.simplejpeg = saved
    assert type(fast) is type(slow) and (fast == slow if isinstance(fast, str) else np.array_equal(fast, slow))


@pytest.mark.parametrize("height, width, cut", [(3, 100, (0, 3, 26, 74)), (3, 101, (0, 3, 26, 75)),
                                                (101, 3, (26, 75, 0, 3)), (4, 64, None), (5, 5, None)])
def test_a_long_photo_is_cut_to_its_centre_16_to_1_before_the_resize(height, width, cut):
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    source = photos._centre_of_long_photo(rgb)
    if cut is None:  # within 16:1: the very photo, so the very pixels as before
        assert source is rgb
    else:  # the same count of pixels cut from each end: the centre stays the centre
        top, bottom, left, right = cut
        assert np.array_equal(source, rgb[top:bottom, left:right]) and source.flags.c_contiguous


THIN_PHOTO_MEMORY = """
import resource, sys
import numpy as np
from showcase_core.encoders.photos import decode_and_resize
decode_and_resize(open(sys.argv[1], "rb").read(), 224)  # torch loaded, its first resize done
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    px = decode_and_resize(open(path, "rb").read(), 224)
    assert px.shape == (224, 224, 3), px.shape
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_1000000_x_1_photo_is_embedded_from_its_centre_in_bounded_memory(tmp_path):
    """A few KB of PNG, 1,000,000 pixels: its shorter side scaled to 224 px made the other 224 million pixels long,
    150 GB, and the allocator's RuntimeError (not a PhotoError) failed the whole batch."""
    import subprocess
    import sys

    from PIL import Image

    line = np.zeros((1, 1_000_000, 3), np.uint8)
    line[:, :, 2] = 255  # blue, but for 8 red pixels in the middle
    line[:, 499_996:500_004] = (255, 0, 0)
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.fromarray(line).save(wide)
    Image.fromarray(line.transpose(1, 0, 2).copy()).save(tall)
    assert wide.stat().st_size < 10_000
    for path in (wide, tall):
        px = decode_and_resize(path.read_bytes(), 64)
        assert px.shape == (64, 64, 3) and np.abs(px.astype(int) - (255, 0, 0)).max() <= 2, path  # its centre
    script = tmp_path / "thin.py"
    script.write_text(THIN_PHOTO_MEMORY)
    done = subprocess.run([sys.executable, str(script), str(wide), str(tall)], capture_output=True, text=True,
                          cwd=photos.__file__.rsplit("/showcase_core/", 1)[0], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 50, f"{done.stdout.strip()} MB more at the peak"  # the photo itself is 3 MB
