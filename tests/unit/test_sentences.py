"""The aligned-sentences reader: its checks, and hash partitions that together give what one reader gives."""

import io
import json

import pytest

from showcase_core.data.sentences import partition_of, read_sentences

REVIEWS = {f"r{i}": ("train" if i % 3 else "test", {f"p{i}a", f"p{i}b"}) for i in range(12)}
TEXT_LESS = {"t0", "t1"}
LINES = [json.dumps({"review_id": f"r{i}", "sentence_index": j, "text": f"sentence {j} of r{i}",
                     "pic_ids": [f"p{i}a", "gone"] if j else [f"p{i}b"], "entities": ["ramen"]})
         for i in range(12) for j in range(2)] + [
    json.dumps({"review_id": "rnowhere", "sentence_index": 0, "text": "x"}),  # unknown_review
    json.dumps({"review_id": "t1", "sentence_index": 0, "text": "x"}),  # text_less_review
    "not json at all",  # unparseable
    "[1, 2]",  # wrong_type: not an object
    json.dumps({"review_id": 5, "sentence_index": 0, "text": "x"}),  # wrong_type: no string id to place it by
    json.dumps({"sentence_index": 0, "text": "x"}),  # missing_field
    json.dumps({"review_id": "r3", "sentence_index": 9, "text": "  "}),  # empty_text
    "",
]
FILE = ("\n".join(LINES) + "\n").encode()


def read(partition=(0, 1), reviews=REVIEWS, text_less=TEXT_LESS) -> dict:
    return read_sentences(io.BytesIO(FILE), "sentences.jsonl", reviews, text_less, partition=partition)


def test_one_reader_checks_every_line():
    whole = read()
    assert whole["table"].num_rows == 24 and whole["photo_refs_removed"] == 12
    assert sorted(q["reason"] for q in whole["quarantine"]) == sorted(
        ["unknown_review", "text_less_review", "unparseable", "wrong_type", "wrong_type", "missing_field",
         "empty_text"])
    row = whole["table"].to_pylist()[1]
    assert row == {"sentence_id": "r0#1", "review_id": "r0", "sentence_index": 1, "text": "sentence 1 of r0",
                   "pic_ids": ["p0a"], "entities": ["ramen"], "split": "test"}


@pytest.mark.parametrize("partitions", [2, 3, 5])
def test_partitions_each_holding_their_reviews_give_exactly_what_one_reader_gives(partitions):
    whole = read()
    rows, bad, removed = [], [], 0
    for k in range(partitions):
        mine = {r: v for r, v in REVIEWS.items() if partition_of(r, partitions) == k}
        part = read((k, partitions), mine, {r for r in TEXT_LESS if partition_of(r, partitions) == k})
        assert all(partition_of(r, partitions) == k for r in part["table"].column("review_id").to_pylist())
        rows += part["table"].to_pylist()
        bad += part["quarantine"]
        removed += part["photo_refs_removed"]
    key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    assert sorted(rows, key=key) == sorted(whole["table"].to_pylist(), key=key)
    assert sorted(bad, key=key) == sorted(whole["quarantine"], key=key)  # each bad line once, at its byte position
    assert removed == whole["photo_refs_removed"]
    assert len({partition_of(r, partitions) for r in REVIEWS}) > 1  # the partitions really split the reviews
