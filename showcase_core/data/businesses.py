"""Business places: where each business is (its latitude and longitude), apart from the reviews.

Source: JSON lines of ``{"business_id", "latitude", "longitude"}`` in degrees (the synthetic world's
``businesses.jsonl``; Google Local's and Yelp's business metadata carry the same fields, other fields are ignored).
A row of a business no accepted review names is quarantined (``unknown_business``), as is one whose coordinates are
not finite numbers in range (``bad_coordinates``) or that repeats a business (``duplicate_business``: the first row
is kept).

The multimodal recommenders count two businesses as neighbours partly by how near they are
(``showcase_core.recommend.graph.place_similarity``), so a cold business is scored like the businesses around it.
"""

from __future__ import annotations

from typing import IO

import pyarrow as pa

from . import schema
from .gest import RecordError, check_unicode, read_json_lines
from .sentences import partition_of

RANGES = {"latitude": 90.0, "longitude": 180.0}


def read_businesses(stream: IO[bytes], source: str, businesses: set[str], partition: tuple[int, int] = (0, 1)) -> dict:
    """Validate a businesses JSON-lines stream: {"table": BUSINESSES table, "quarantine": rows}. ``partition`` (k, n):
    only the rows whose business_id is in hash partition k of n (``partition_of``; partition 0 also takes the lines
    with no string business_id), and ``businesses`` need hold only that partition's accepted businesses, so n readers
    of one file together give what one reader holding them all gives."""
    seen: set[str] = set()
    mine, partitions = partition

    def check(obj: dict) -> dict | None:
        key = obj.get("business_id")
        if partitions > 1 and (partition_of(key, partitions) if isinstance(key, str) else 0) != mine:
            return None
        for name in ("business_id", *RANGES):
            if obj.get(name) is None:
                raise RecordError("missing_field", name, f"field {name!r} is missing")
        business = obj["business_id"]
        if not isinstance(business, str) or not business:
            raise RecordError("wrong_type", "business_id", "field 'business_id' must be a non-empty string")
        check_unicode(business, "business_id")
        for name, limit in RANGES.items():
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RecordError("wrong_type", name, f"field {name!r} must be a number of degrees")
            if not -limit <= value <= limit:  # False for NaN too; an integer of any size compares exactly
                raise RecordError("bad_coordinates", name, f"{name} {str(value)[:40]} of business {business} is "
                                                           f"outside -{limit:g}..{limit:g}")
        if business not in businesses:
            raise RecordError("unknown_business", "business_id", f"business {business} has no accepted review")
        if business in seen:
            raise RecordError("duplicate_business", "business_id",
                              f"business {business} appeared earlier in the file (the first place is kept)")
        seen.add(business)
        return {"business_id": business, "latitude": float(obj["latitude"]), "longitude": float(obj["longitude"])}

    rows, bad = read_json_lines(stream, source, check, unreadable=mine == 0)
    return {"table": pa.Table.from_pylist(rows, schema=schema.BUSINESSES), "quarantine": bad}
