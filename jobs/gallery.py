"""A static HTML page of sample showcases: ``python -m jobs.gallery --root ROOT [--date D] [--n 50]``.

Reads the showcases of a published date (the newest by default), takes the first n in (user_id, business_id) order and
writes one self-contained page to ``ROOT/reports/gallery/<date>/index.html``: per showcase the user and business
ids, the photos (downscaled JPEG data URIs, so the page renders anywhere without access to ROOT) with their ids and
scores, the explanation and the cold-start flag. A photo that cannot be read becomes a visible placeholder with the
reason, and the run report counts it.
"""

from __future__ import annotations

import base64
import html
import io
import re
import sys
import time

import pyarrow as pa
from pydantic import field_validator

from showcase_core.showcase import latest_date, publication, read_showcases
from showcase_core.store import StoreError, filesystem_for, new_run_id, uri_path, utc_now, write_bytes_atomic

from .common import JobSettings, UserError, exit_process, new_report, open_store, parse_args, run, setting, versions


class Settings(JobSettings):
    """Write a static HTML page of sample showcases of a published date."""

    date: str = setting("", "the published date to show, YYYY-MM-DD (empty: the newest)")
    n: int = setting(50, "showcases on the page: the first in (user_id, business_id) order", ge=1)

    @field_validator("date")
    @classmethod
    def _a_date(cls, value: str) -> str:
        if value and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"--date must look like YYYY-MM-DD, got {value!r}")
        return value


THUMB_PX = 256  # longest side of an embedded photo
COLUMNS = ["user_id", "business_id", "image_ids", "image_uris", "image_scores", "explanation", "cold_start"]

CSS = """
body { font: 14px/1.4 sans-serif; margin: 16px; background: #fff; color: #222; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 12px; }
.ids { font-family: monospace; margin-bottom: 8px; }
.photos { display: flex; gap: 8px; }
figure { margin: 0; width: 160px; }
figure img, .missing { width: 160px; height: 160px; object-fit: cover; display: block; }
.missing { background: #d0d0d0; color: #222; font-size: 12px; overflow: hidden; box-sizing: border-box; padding: 6px; }
figcaption { font: 11px monospace; word-break: break-all; }
.cold { border: 1px solid #222; padding: 0 4px; font-weight: bold; }
.explanation { margin: 8px 0 0; white-space: pre-wrap; }
"""


def thumbnail(fs, path: str) -> str:
    """A photo as a downscaled JPEG data URI."""
    from PIL import Image

    with fs.open_input_stream(path) as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at a reduced scale, much faster for big photos
        im = im.convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def why(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def card(row: dict, photos: list[tuple[str, float | None, str | None, str | None]]) -> str:
    esc = html.escape
    figures = []
    for image_id, score, src, reason in photos:
        label = f"{image_id} · score {score:.3f}" if score is not None else str(image_id)
        if src:
            body = f'<img src="{src}" alt="{esc(str(image_id))}" title="{esc(label)}">'
        else:
            body = f'<div class="missing" title="{esc(label)}">photo unavailable: {esc(reason)}</div>'
        figures.append(f"<figure>{body}<figcaption>{esc(label)}</figcaption></figure>")
    cold = ' <span class="cold">cold start</span>' if row["cold_start"] else ""
    return (f'<div class="card"><div class="ids">user {esc(str(row["user_id"]))} · business {esc(str(row["business_id"]))}'
            f'{cold}</div><div class="photos">{"".join(figures)}</div>'
            f'<p class="explanation">{esc(row["explanation"] or "")}</p></div>')


def read_publication(store, date: str) -> tuple[str, dict, pa.Table]:
    """(date, its publication record, its showcases): the newest published date when none is given."""
    try:
        date = date or latest_date(store)
        return date, publication(store, date), read_showcases(store.root, date, columns=COLUMNS)
    except StoreError as e:
        raise UserError(str(e)) from None


def render_cards(rows: list[dict]) -> tuple[list[str], int, list[dict]]:
    """(one card per showcase, photos embedded, photos missing with the reason)."""
    filesystems: dict = {}  # one filesystem per kind (local, s3): S3 clients are slow to make
    cards, embedded, missing = [], 0, []
    for row in rows:
        photos = []
        scores = row["image_scores"] or []
        for i, (image_id, uri) in enumerate(zip(row["image_ids"] or [], row["image_uris"] or [])):
            score = scores[i] if i < len(scores) else None
            try:
                kind, path = uri_path(uri)
                if kind not in filesystems:
                    filesystems[kind] = filesystem_for(uri)[0]
                photos.append((image_id, score, thumbnail(filesystems[kind], path), None))
                embedded += 1
            except Exception as e:  # a bad photo is shown as a placeholder, never the end of the run
                photos.append((image_id, score, None, why(e)))
                missing.append({"image_id": image_id, "uri": uri, "reason": why(e)})
        cards.append(card(row, photos))
    return cards, embedded, missing


def page(date: str, manifest: dict, cards: list[str], published: int, embedded: int, missing: int) -> str:
    title = html.escape(f"Showcases {date}")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body><h1>{title}</h1>"
            f"<p>run {html.escape(str(manifest.get('run_id', '?')))} · showing {len(cards)} of {published} "
            f"showcases · {embedded} photos, {missing} unavailable · made {utc_now()}</p>"
            f'<div class="grid">{"".join(cards)}</div></body></html>\n')


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args("gallery", Settings, argv)
    store = open_store(cfg.root)
    date, manifest, table = read_publication(store, cfg.date)
    run_id, started = new_run_id(), time.monotonic()
    report = new_report("gallery", cfg, run_id)

    rows = table.sort_by([("user_id", "ascending"), ("business_id", "ascending")]).slice(0, cfg.n).to_pylist()
    cards, embedded, missing = render_cards(rows)
    rel = f"reports/gallery/{date}/index.html"
    write_bytes_atomic(store.fs, store.path(rel),
                       page(date, manifest, cards, table.num_rows, embedded, len(missing)).encode("utf-8"))

    by_reason: dict[str, int] = {}
    for m in missing:
        by_reason[m["reason"]] = by_reason.get(m["reason"], 0) + 1
    report.update(date=date, published_run_id=manifest.get("run_id"), gallery=store.uri(rel),
                  counts={"showcases_published": table.num_rows, "showcases_shown": len(rows),
                          "photos_embedded": embedded, "photos_missing": len(missing),
                          "photos_missing_by_reason": by_reason},
                  missing_photos=missing[:100], timings_s={"total": round(time.monotonic() - started, 3)},
                  versions=versions(), finished_at=utc_now())
    print(f"report: {store.write_report('gallery', run_id, report)}", file=sys.stderr)
    print(store.uri(rel))
    return 0


if __name__ == "__main__":
    exit_process(run("gallery", main))
