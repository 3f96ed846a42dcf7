"""jobs.gallery: a published date → one self-contained HTML page, checked as text and as pixels in headless Chromium.

Every test photo is a solid JPEG of its own saturated colour, so the screenshot tells which photos rendered: each one
shows as a 160x160 block of its colour, a missing photo shows none of its colour, and the placeholders show their grey.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import uuid

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs import gallery
from jobs.common import run
from showcase_core.data.schema import SHOWCASES
from showcase_core import tables as delta
from showcase_core.showcase import TABLE, app_id
from showcase_core.store import Store, filesystem_for, utc_now

DATE = "2024-05-01"
COLOURS = [(255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 128, 0),
           (128, 0, 255), (0, 128, 255), (255, 0, 128), (128, 255, 0), (0, 255, 128)]
CELL = 160 * 160  # CSS size of one photo in the page
PLACEHOLDER = (208, 208, 208)  # .missing background
EVIL = ('Great <b>tacos</b> & "salsa" <script>document.body.innerHTML="";document.body.style.background="#f0f"</script>'
        '<img src=x onerror="document.body.style.background=\'#f0f\'">')  # inert, or the page turns magenta


def jpeg(colour, size=(400, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=92)
    return out.getvalue()


def publish(root: str, date: str, parts: list[list[dict]]) -> None:
    """Publish showcases the way jobs.nightly does: data files in the date's partition, one commit for the date."""
    store = Store.open(root)
    files = []
    for i, rows in enumerate(parts):
        full = [{"image_scores": [0.9 - 0.1 * k for k in range(len(r["image_ids"]))], "explanation": "nice place",
                 "images_only": False, "cold_start": False, "candidate_score": 0.5, "encoder_id": "test-enc",
                 "dpp_model": "dpp/v1", "generator_model": "pc2l/v1", "run_id": "run-1", "generated_at": utc_now(),
                 "dt": date, **r} for r in rows]
        files.append(delta.write_file(store, TABLE, pa.Table.from_pylist(full, schema=SHOWCASES),
                                      f"part-run-1-{i:05d}.parquet", {"dt": date}))
    delta.commit(store, TABLE, files, SHOWCASES, run_id="run-1", stage="test", app_id=app_id(date),
                 partition_by=["dt"], replace={"dt": date})


def run_gallery(capsys, args: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run("gallery", gallery.main, args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_report(err: str) -> dict:
    uri = re.search(r"^report: (\S+)$", err, re.M).group(1)
    fs, path = filesystem_for(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def screenshot(html_path: str, tmp_path) -> np.ndarray:
    """Render a local HTML file in real headless Chromium; the screenshot as an (H, W, 3) int array."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed: the gallery test needs a real headless browser "
                    "(Debian: apt-get install -y chromium)")
    png = str(tmp_path / f"shot-{uuid.uuid4().hex[:6]}.png")
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:6]}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--screenshot={png}",
           "--window-size=1200,1400", "file://" + os.path.abspath(html_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.exists(png), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    shutil.rmtree(profile, ignore_errors=True)
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def count(shot: np.ndarray, colour, tol: int = 16) -> int:
    return int((np.abs(shot - np.array(colour)).max(axis=2) <= tol).sum())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """image id → (local path, colour); p2c is drawn and then deleted, p4c is not a JPEG at all."""
    base = tmp_path_factory.mktemp("photos")
    ids = ["p1a", "p1b", "p1c", "p2a", "p2b", "p2c", "p3a", "p3b", "p3c", "p4a", "p4b"]
    out = {}
    for image_id, colour in zip(ids, COLOURS):
        path = base / f"{image_id}.jpg"
        path.write_bytes(jpeg(colour))
        out[image_id] = (str(path), colour)
    os.remove(out["p2c"][0])
    (base / "p4c.jpg").write_bytes(b"\xff\xd8 this is not really a JPEG")
    out["p4c"] = (str(base / "p4c.jpg"), None)
    return out


def showcase(user, business, ids, photos, **extra) -> dict:
    return {"user_id": user, "business_id": business, "image_ids": ids, "image_uris": [photos[i][0] for i in ids],
            **extra}


@pytest.fixture(scope="module")
def local_root(tmp_path_factory, photos):
    root = str(tmp_path_factory.mktemp("gallery-root"))
    publish(root, DATE, [  # two parts, not in (user, business) order: the job sorts
        [showcase("u3", "b2", ["p3a", "p3b", "p3c"], photos, explanation=EVIL),
         showcase("u1", "b1", ["p1a", "p1b", "p1c"], photos, explanation="The patio at dusk & the tacos.")],
        [showcase("u4", "b2", ["p4a", "p4b", "p4c"], photos),
         showcase("u2", "b1", ["p2a", "p2b", "p2c"], photos, cold_start=True)],
    ])
    return root


@pytest.fixture(scope="module")
def local_gallery(local_root):
    out, err = io.StringIO(), io.StringIO()  # module scope: no capsys, capture by hand
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run("gallery", gallery.main, ["--root", local_root])
    assert code == 0, err.getvalue()
    path = os.path.join(local_root, "reports", "gallery", DATE, "index.html")
    assert out.getvalue().strip().splitlines()[-1] == path  # the gallery path, printed last
    with open(path, encoding="utf-8") as f:
        return path, f.read(), read_report(err.getvalue())


def test_gallery_html_has_ids_photos_escaped_text_and_placeholders(local_gallery, photos):
    _, page, report = local_gallery
    assert report["counts"] == {"showcases_published": 4, "showcases_shown": 4, "photos_embedded": 10,
                                "photos_missing": 2, "photos_missing_by_reason": {"not found": 1, "not an image": 1}}
    assert {m["image_id"] for m in report["missing_photos"]} == {"p2c", "p4c"}
    assert report["date"] == DATE and report["published_run_id"] == "run-1"
    # cards in (user, business) order, with both ids
    assert [m.group(1) for m in re.finditer(r"user (u\d) · business b\d", page)] == ["u1", "u2", "u3", "u4"]
    # the explanation is shown escaped: no live markup from the data
    assert "&lt;script&gt;document.body.innerHTML=&quot;&quot;" in page
    assert "&lt;b&gt;tacos&lt;/b&gt; &amp; &quot;salsa&quot;" in page
    assert "<script" not in page and "<b>" not in page and "<img src=x" not in page and "onerror=\"" not in page
    assert "&lt;img src=x onerror=&quot;document.body.style.background=&#x27;#f0f&#x27;&quot;&gt;" in page
    assert "The patio at dusk &amp; the tacos." in page
    # each embedded photo: a downscaled JPEG of its own colour, captioned with its id and score
    embedded = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="(p\d\w)" title="([^"]+)">', page)
    assert sorted(i for _, i, _ in embedded) == ["p1a", "p1b", "p1c", "p2a", "p2b", "p3a", "p3b", "p3c", "p4a", "p4b"]
    for data, image_id, title in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "JPEG" and max(im.size) == 256, im.size
            mean = np.asarray(im.convert("RGB")).astype(int).mean(axis=(0, 1))
            assert np.abs(mean - photos[image_id][1]).max() < 8, (image_id, mean)
        assert title.startswith(f"{image_id} · score 0.")
        assert f"<figcaption>{title}</figcaption>" in page
    # placeholders with the reason; the cold-start flag on u2's card only
    assert page.count('<div class="missing"') == 2
    assert "photo unavailable: not found" in page and "photo unavailable: not an image" in page
    assert page.count('class="cold"') == 1
    assert re.search(r"user u2 · business b1 <span class=\"cold\">cold start</span>", page)


def test_gallery_renders_photos_in_headless_chromium(local_gallery, photos, tmp_path):
    path, _, _ = local_gallery
    shot = screenshot(path, tmp_path)
    for image_id, (_, colour) in photos.items():
        if colour is None:
            continue
        seen = count(shot, colour)
        if image_id == "p2c":  # its file is gone: the placeholder must not show it (or anything of its colour)
            assert seen < 50, f"{image_id}'s colour is on the page although its file is missing ({seen} px)"
        else:  # a 160x160 block, shown once
            assert 0.85 * CELL <= seen <= 1.05 * CELL, f"photo {image_id} {colour}: {seen} px, expected ~{CELL}"
    # the two placeholders are visible as grey blocks (less their text)
    assert count(shot, PLACEHOLDER, tol=2) >= 2 * 0.6 * CELL


def test_gallery_n_takes_the_first_showcases_in_order(local_root, capsys):
    code, out, err = run_gallery(capsys, ["--root", local_root, "--date", DATE, "--n", "2"])
    assert code == 0, err
    with open(out.strip().splitlines()[-1], encoding="utf-8") as f:
        page = f.read()
    assert [m.group(1) for m in re.finditer(r"user (u\d) · business", page)] == ["u1", "u2"]
    counts = read_report(err)["counts"]
    assert (counts["showcases_shown"], counts["photos_embedded"], counts["photos_missing"]) == (2, 5, 1)


@pytest.mark.parametrize("args, message", [
    ([], "no showcases published"),
    (["--n", "0"], "--n: input should be greater than or equal to 1"),
    (["--date", "2020-01-01"], "not published"),
    (["--date", "../x"], "YYYY-MM-DD"),
])
def test_gallery_bad_input_exits_2_with_one_line(tmp_path, capsys, local_root, args, message):
    root = local_root
    if not args:  # a ROOT with no showcases table
        root = str(tmp_path / "empty")
        os.mkdir(root)
    code, out, err = run_gallery(capsys, ["--root", root, *args])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("showcase gallery: error:"), err


def test_gallery_with_root_and_photos_on_s3(seaweed, tmp_path, capsys):
    bucket = f"gallery-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(bucket)
    fs = seaweed.filesystem()
    uris = {}
    for image_id, colour in [("s1", COLOURS[0]), ("s2", COLOURS[1]), ("s3", COLOURS[2])]:
        with fs.open_output_stream(f"{bucket}/photos/{image_id}.jpg") as f:
            f.write(jpeg(colour, (800, 600)))
        uris[image_id] = (f"s3://{bucket}/photos/{image_id}.jpg", colour)
    uris["s4"] = (f"s3://{bucket}/photos/never-uploaded.jpg", None)
    root = f"s3://{bucket}/root"
    publish(root, DATE, [[showcase("v1", "c1", ["s1", "s2"], uris, explanation="from S3"),
                          showcase("v2", "c1", ["s3", "s4"], uris)]])

    code, out, err = run_gallery(capsys, ["--root", root])
    assert code == 0, err
    page_uri = f"s3://{bucket}/root/reports/gallery/{DATE}/index.html"
    assert out.strip().splitlines()[-1] == page_uri
    with fs.open_input_stream(f"{bucket}/root/reports/gallery/{DATE}/index.html") as f:
        page = f.read().decode("utf-8")
    assert page.count("data:image/jpeg;base64,") == 3 and "photo unavailable: not found" in page
    report = read_report(err)
    assert report["gallery"] == page_uri
    assert (report["counts"]["photos_embedded"], report["counts"]["photos_missing"]) == (3, 1)
    # the page needs nothing from S3 to render: a local copy shows every photo
    local = tmp_path / "s3-gallery.html"
    local.write_text(page, encoding="utf-8")
    shot = screenshot(str(local), tmp_path)
    for image_id in ("s1", "s2", "s3"):
        assert 0.85 * CELL <= count(shot, uris[image_id][1]) <= 1.05 * CELL, image_id
