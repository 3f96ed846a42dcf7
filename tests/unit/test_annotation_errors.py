"""read_labels on broken annotation files: a line that is not UTF-8, not JSON or not an object is one error naming the
file and the line; a row whose field has the wrong JSON type is quarantined (``wrong_type``), never a crash."""

import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from showcase_core.data.gest import AnnotationError, read_labels
from showcase_core.data.schema import QUARANTINE

REVIEWS = pa.table({"review_id": ["r1"], "split": ["train"]})
IMAGES = pa.table({"image_id": ["p1"], "review_id": ["r1"]})
GOOD = {"review_id": "r1", "sentence": "The patio.", "pic_id": "p1", "label": 1}


def accepted(review_ids):
    return (REVIEWS.filter(pa.compute.is_in(REVIEWS.column("review_id"), value_set=review_ids)),
            IMAGES.filter(pa.compute.is_in(IMAGES.column("review_id"), value_set=review_ids)))


@pytest.mark.parametrize("third, message", [
    (b"[1, 2]", "line 3 is a JSON list, not an object"),
    (b'"r1"', "line 3 is a JSON str, not an object"),
    (b'{"review_id": "r1", "sentence": "caf\xe9"}', "line 3 is not UTF-8"),
    (b'{"label": ' + b"1" * 5000 + b"}", "line 3: Exceeds the limit"),
])
def test_a_line_that_is_not_a_utf8_json_object_is_one_error_naming_the_line(tmp_path, third, message):
    path = tmp_path / "labels.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\n" + third + b"\n")
    with pytest.raises(AnnotationError) as caught:
        read_labels(str(path), accepted)
    assert str(caught.value).startswith(f"{path}: cannot be read (") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("field, value", [("review_id", ["r1"]), ("review_id", {"r": 1}), ("sentence", 5),
                                          ("pic_id", 7), ("split", 3)])
def test_a_field_of_the_wrong_type_is_quarantined(tmp_path, field, value):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, field: value}) + "\n")
    pairs, bad = read_labels(str(path), accepted)
    assert pairs.column("text").to_pylist() == ["The patio."]
    assert [(b["reason"], b["field"], b["position"]) for b in bad] == [("wrong_type", field, "row 1")]


def test_a_lone_surrogate_is_a_replacement_character_in_a_sentence_and_an_unknown_review_in_an_id(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({**GOOD, "sentence": "The \ud83d patio."}) + "\n"
                    + json.dumps({**GOOD, "review_id": "r\udc00"}) + "\n")
    pairs, bad = read_labels(str(path), accepted)
    assert pairs.column("text").to_pylist() == ["The \ufffd patio."]
    assert [b["reason"] for b in bad] == ["unknown_review"]
    pa.Table.from_pylist(bad, schema=QUARANTINE)
