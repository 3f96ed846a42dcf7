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


def read_lines(lines: list[bytes], partition=(0, 1)) -> dict:
    reviews = {r: v for r, v in REVIEWS.items() if partition_of(r, partition[1]) == partition[0]}
    return read_sentences(io.BytesIO(b"\n".join(lines) + b"\n"), "sentences.jsonl", reviews, TEXT_LESS,
                          partition=partition)


def test_a_lone_surrogate_is_a_replacement_character_in_a_text_and_invalid_unicode_in_a_review_id():
    lines = [b'{"review_id": "r0", "sentence_index": 0, "text": "the broth \\ud83d", "entities": ["ra\\udc00men"]}',
             b'{"review_id": "r\\ud83d", "sentence_index": 0, "text": "x"}']
    for partitions in (1, 3):  # every reader places the bad id without a crash; one of them quarantines it
        parts = [read_lines(lines, (k, partitions)) for k in range(partitions)]
        rows = [row for part in parts for row in part["table"].to_pylist()]
        assert [(r["text"], r["entities"]) for r in rows] == [("the broth \ufffd", ["ra\ufffdmen"])]
        assert [(q["reason"], q["field"]) for part in parts for q in part["quarantine"]] == [
            ("invalid_unicode", "review_id")]


def test_a_sentence_index_outside_the_int32_column_is_out_of_range():
    lines = [json.dumps({"review_id": "r0", "sentence_index": i, "text": "x"}).encode()
             for i in (2**31 - 1, 2**31, 9999999999, -1)]
    result = read_lines(lines)
    assert result["table"].column("sentence_index").to_pylist() == [2**31 - 1]
    assert [(q["reason"], q["field"]) for q in result["quarantine"]] == [("out_of_range", "sentence_index")] * 3


def test_a_repeated_sentence_is_quarantined_and_the_first_is_kept():
    lines = [json.dumps({"review_id": r, "sentence_index": i, "text": t}).encode()
             for r, i, t in (("r0", 0, "first"), ("r0", 1, "other"), ("r0", 0, "again"), ("r1", 0, "r1's"))]
    for partitions in (1, 2):
        parts = [read_lines(lines, (k, partitions)) for k in range(partitions)]
        rows = sorted((r["sentence_id"], r["text"]) for part in parts for r in part["table"].to_pylist())
        assert rows == [("r0#0", "first"), ("r0#1", "other"), ("r1#0", "r1's")]
        bad = [q for part in parts for q in part["quarantine"]]
        third = len(lines[0]) + len(lines[1]) + 2
        assert [(q["reason"], q["position"]) for q in bad] == [("duplicate_sentence", f"byte {third}")]
