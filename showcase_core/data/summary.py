"""Table-1-style dataset summary of the published tables (the paper's Table 1 columns)."""

from __future__ import annotations

import pyarrow.compute as pc

from ..buckets import buckets_for, distinct_counts
from ..store import Store

DISTINCT_BUCKET_ROWS = 2_000_000  # reviews whose user and business ids one counting pass holds


def dataset_summary(store: Store, bucket_rows: int = DISTINCT_BUCKET_ROWS) -> dict:
    """Counts over the published reviews and images, streamed batch by batch; users and businesses are counted
    bucket by bucket of ids (``distinct_counts``), so memory is a batch plus about ``bucket_rows`` ids, not the
    whole table."""
    reviews = words = without_text = 0
    splits: dict[str, int] = {}
    # one file at a time, in batches of 8,192 reviews: reading four files ahead and splitting 65,536 texts into words
    # at once held about 540 MiB more over the reviews of a 1 GB Gest-raw file (tests/perf/ingest_memory.py)
    for batch in store.iter_table_batches("reviews", ["review_text", "split"], batch_size=8192, files_ahead=1):
        reviews += batch.num_rows
        without_text += batch.column("review_text").null_count  # text-less reviews with photos (Gest-raw, Google)
        words += pc.sum(pc.list_value_length(pc.utf8_split_whitespace(batch.column("review_text")))).as_py() or 0
        for split, n in zip(*pc.value_counts(batch.column("split")).flatten()):
            splits[split.as_py()] = splits.get(split.as_py(), 0) + n.as_py()
    distinct = distinct_counts(lambda: store.iter_table_batches("reviews", ["user_id", "business_id"]),
                               ["user_id", "business_id"], buckets_for(reviews, bucket_rows))
    users, businesses = distinct["user_id"], distinct["business_id"]
    photos = sum(b.num_rows for b in store.iter_table_batches("images", ["image_id"]))
    return {
        "photos": photos,
        "reviews": reviews,
        "users": users,
        "businesses": businesses,
        "reviews_without_text": without_text,
        "avg_review_words": round(words / (reviews - without_text), 2) if reviews > without_text else 0.0,
        "photos_per_review": round(photos / reviews, 2) if reviews else 0.0,
        "splits": dict(sorted(splits.items())),
    }


def summary_markdown(summary: dict, quarantined: dict | None = None) -> str:
    lines = [
        "| photos | reviews | users | businesses | avg. review words | photos/review |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {summary['photos']:,} | {summary['reviews']:,} | {summary['users']:,} | {summary['businesses']:,} "
        f"| {summary['avg_review_words']} | {summary['photos_per_review']} |",
        "",
        "splits: " + ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items()),
    ]
    if summary.get("reviews_without_text"):
        lines.append(f"kept without text (their photos count): {summary['reviews_without_text']:,} reviews")
    if quarantined:
        lines.append("quarantined: " + ", ".join(f"{k} {v:,}" for k, v in sorted(quarantined.items())))
    return "\n".join(lines)
