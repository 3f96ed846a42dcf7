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
from .gest import RecordError, check_photo_id, read_json_lines


def read_owner_photos(stream: IO[bytes], source: str, businesses: set[str], present: Container[str],
                      images_uri: str) -> dict:
    """Validate an owner-photos JSON-lines stream: {"table": OWNER_PHOTOS table, "quarantine": rows}. ``present``
    says whether a photo id is under ``images_uri`` (showcase_core.data.ingest.PhotoLookup: a stat a row)."""
    seen: set[str] = set()
    prefix = join_uri(images_uri, "")

    def check(obj: dict) -> dict:
        for name in ("business_id", "pic_id"):
            if obj.get(name) is None:
                raise RecordError("missing_field", name, f"field {name!r} is missing")
            if not isinstance(obj[name], str) or not obj[name]:
                raise RecordError("wrong_type", name, f"field {name!r} must be a non-empty string")
        business, pic = obj["business_id"], check_photo_id(obj["pic_id"], "pic_id")
        if business not in businesses:
            raise RecordError("unknown_business", "business_id", f"business {business} has no accepted review")
        if pic not in present:
            raise RecordError("owner_photo_missing", "pic_id", f"photo {pic}.jpg is not under {images_uri}")
        if pic in seen:
            raise RecordError("duplicate_photo", "pic_id", f"photo {pic} appeared earlier in the file")
        seen.add(pic)
        return {"image_id": pic, "business_id": business, "uri": f"{prefix}{pic}.jpg"}

    rows, bad = read_json_lines(stream, source, check)
    return {"table": pa.Table.from_pylist(rows, schema=schema.OWNER_PHOTOS), "quarantine": bad}
