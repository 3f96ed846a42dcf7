"""Owner photos: the photos a business publishes of itself (its menu, its room), apart from the reviews.

Source: JSON lines of ``{"business_id", "pic_id"}`` (the synthetic world's ``owner_photos.jsonl``; for Google
Local the business's own photos), photos at ``<images>/<pic_id>.jpg`` like the reviews' photos. A row of a business
no accepted review names is quarantined (``unknown_business``: no recommender ranks it), as is one whose photo is
not under the images root (``owner_photo_missing``) or that repeats a photo id (``duplicate_photo``).

The recommenders score a cold business (no train interaction) from these photos alone, never from a held-out
user's own photos.
"""

from __future__ import annotations

from typing import IO, Container

import pyarrow as pa

from ..store import join_uri
from . import schema
from .gest import RecordError, check_photo_id, check_unicode, loads_line, read_json_lines
from .sentences import partition_of

LOOKUP_BATCH = 1_000  # photo ids asked of the images root together


def read_owner_photos(stream: IO[bytes], source: str, businesses: set[str], present: Container[str],
                      images_uri: str, partition: tuple[int, int] = (0, 1)) -> dict:
    """Validate an owner-photos JSON-lines stream: {"table": OWNER_PHOTOS table, "quarantine": rows}. ``present``
    says whether a photo id is under ``images_uri`` (``photos_present``' answer for the same file). ``partition``
    (k, n): only the rows whose pic_id is in hash partition k of n (``partition_of``; partition 0 also takes the lines
    with no string pic_id), so n readers of one file together give what one reader gives (a repeated photo id is in
    one partition); ``businesses`` holds every accepted business."""
    seen: set[str] = set()
    prefix = join_uri(images_uri, "")
    mine, partitions = partition

    def check(obj: dict) -> dict | None:
        pic = obj.get("pic_id")
        if partitions > 1 and (partition_of(pic, partitions) if isinstance(pic, str) else 0) != mine:
            return None
        for name in ("business_id", "pic_id"):
            if obj.get(name) is None:
                raise RecordError("missing_field", name, f"field {name!r} is missing")
            if not isinstance(obj[name], str) or not obj[name]:
                raise RecordError("wrong_type", name, f"field {name!r} must be a non-empty string")
        business, pic = check_unicode(obj["business_id"], "business_id"), check_photo_id(obj["pic_id"], "pic_id")
        if business not in businesses:
            raise RecordError("unknown_business", "business_id", f"business {business} has no accepted review")
        if pic not in present:
            raise RecordError("owner_photo_missing", "pic_id", f"photo {pic}.jpg is not under {images_uri}")
        if pic in seen:
            raise RecordError("duplicate_photo", "pic_id", f"photo {pic} appeared earlier in the file")
        seen.add(pic)
        return {"image_id": pic, "business_id": business, "uri": f"{prefix}{pic}.jpg"}

    rows, bad = read_json_lines(stream, source, check, unreadable=mine == 0)
    return {"table": pa.Table.from_pylist(rows, schema=schema.OWNER_PHOTOS), "quarantine": bad}


def photos_present(stream: IO[bytes], businesses: set[str], lookup, batch: int = LOOKUP_BATCH,
                   partition: tuple[int, int] = (0, 1)) -> set[str]:
    """The photo ids of an owner-photos JSON-lines stream whose photo is under the images root, asked of ``lookup``
    (showcase_core.data.ingest.PhotoLookup) ``batch`` ids at a time (on S3, its threads' HEADs side by side) instead of
    one stat a row; those of ``partition`` only (``read_owner_photos``). Rows that ``read_owner_photos`` quarantines
    before it asks (unreadable, a field missing or of the wrong type, an unknown business, an unsafe id) are not
    looked up."""
    present: set[str] = set()
    pending: list[str] = []
    mine, partitions = partition
    for line in stream:
        try:
            obj = loads_line(line.strip()) if line.strip() else None
            pic = obj.get("pic_id") if isinstance(obj, dict) and obj.get("business_id") in businesses else None
            if isinstance(pic, str) and pic and (partitions == 1 or partition_of(pic, partitions) == mine):
                pending.append(check_photo_id(pic, "pic_id"))
        except (RecordError, TypeError):  # TypeError: an unhashable business_id
            continue
        if len(pending) >= batch:
            present |= lookup.present(pending)
            pending = []
    return present | (lookup.present(pending) if pending else set())
