"""Aligned review sentences: which sentence of a review describes which of its photos.

Source: JSON lines of ``{"review_id", "sentence_index", "text", "pic_ids", "entities"}`` (the synthetic world's
``sentences.jsonl``; for real Gest data ``jobs.distill`` produces the same table). Each row is checked against the
accepted reviews: a sentence of an unknown review is quarantined (``unknown_review``), one of a review kept without
its text (Gest-raw, Google Local) too (``text_less_review``), a repeat of a (review, sentence index) already read
(``duplicate_sentence``: the first is kept); photo ids the review does not have (any more) are removed from the sentence
and counted. A lone UTF-16 surrogate becomes U+FFFD in a text or an entity; a review id holding one is
``invalid_unicode``.
"""

from __future__ import annotations

import zlib
from typing import IO

import pyarrow as pa

from . import schema
from .gest import RecordError, check_unicode, read_json_lines, storable

MAX_INDEX = 2**31 - 1  # the sentence_index column is int32


def partition_of(key: str, partitions: int) -> int:
    """The hash partition of an id (a review's, a photo's, a business's): stable across processes and runs, unlike
    ``hash``."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % partitions  # a bad id too: its reader quarantines it


def read_sentences(stream: IO[bytes], source: str, reviews: dict[str, tuple[str, set[str]]],
                   text_less: frozenset[str] | set[str] = frozenset(), partition: tuple[int, int] = (0, 1)) -> dict:
    """Validate a sentences JSON-lines stream against {review_id: (split, accepted pic ids)} of the reviews with a
    text and the ids of those without one.

    ``partition`` (k, n): only the sentences whose review id is in hash partition k of n (``partition_of``), and
    ``reviews`` and ``text_less`` need hold only that partition's reviews; partition 0 also quarantines the lines
    with no string review id to place them by. So n readers of one file, each holding a partition of the reviews,
    together give exactly what one reader holding them all would.

    Returns {"table": SENTENCES table, "quarantine": list of rows, "photo_refs_removed": int}.
    """
    removed, (mine, partitions) = 0, partition
    seen: set[str] = set()  # the sentence ids read so far (this partition's)

    def check(obj: dict) -> dict | None:
        nonlocal removed
        review_id, index, sentence = obj.get("review_id"), obj.get("sentence_index"), obj.get("text")
        if partitions > 1 and (partition_of(review_id, partitions) if isinstance(review_id, str) else 0) != mine:
            return None
        for name, value, kind in (("review_id", review_id, str), ("sentence_index", index, int), ("text", sentence, str)):
            if value is None:
                raise RecordError("missing_field", name, f"field {name!r} is missing")
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RecordError("wrong_type", name, f"field {name!r} must be {kind.__name__}")
        pics, entities = obj.get("pic_ids") or [], obj.get("entities") or []
        if not (isinstance(pics, list) and all(isinstance(p, str) for p in pics)):
            raise RecordError("wrong_type", "pic_ids", "field 'pic_ids' must be a list of photo ids")
        if not (isinstance(entities, list) and all(isinstance(e, str) for e in entities)):
            raise RecordError("wrong_type", "entities", "field 'entities' must be a list of strings")
        check_unicode(review_id, "review_id")
        if not 0 <= index <= MAX_INDEX:
            raise RecordError("out_of_range", "sentence_index", f"field 'sentence_index' is {index}, outside "
                                                                f"0..{MAX_INDEX}")
        if not sentence.strip():
            raise RecordError("empty_text", "text", "field 'text' is empty")
        if review_id in text_less:
            raise RecordError("text_less_review", "review_id", f"review {review_id} was kept without its text")
        if review_id not in reviews:
            raise RecordError("unknown_review", "review_id", f"review {review_id} is not among the accepted reviews")
        sentence_id = f"{review_id}#{index}"
        if sentence_id in seen:
            raise RecordError("duplicate_sentence", "sentence_index", f"sentence {index} of review {review_id} "
                                                                      "appeared earlier in the file (the first is kept)")
        seen.add(sentence_id)
        split, accepted = reviews[review_id]
        kept = [p for p in pics if p in accepted]
        removed += len(pics) - len(kept)
        return {"sentence_id": sentence_id, "review_id": review_id, "sentence_index": index,
                "text": storable(sentence.strip()), "pic_ids": kept, "entities": [storable(e) for e in entities],
                "split": split}

    rows, bad = read_json_lines(stream, source, check, unreadable=mine == 0)
    return {"table": pa.Table.from_pylist(rows, schema=schema.SENTENCES), "quarantine": bad,
            "photo_refs_removed": removed}
