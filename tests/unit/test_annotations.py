"""showcase_core.data.gest.read_labels: an annotation file of (sentence, photo, label) rows -> pairs + quarantine."""

import json

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest

from showcase_core.data.gest import AnnotationError, read_labels

REVIEWS = pa.table({"review_id": ["r1", "r2"], "split": ["train", "test"]})
IMAGES = pa.table({"image_id": ["p1", "p2", "p3"], "review_id": ["r1", "r1", "r2"]})
GOOD = [{"review_id": "r1", "sentence": "The patio.", "pic_id": "p1", "label": 1},
        {"review_id": "r1", "sentence": "The patio.", "pic_id": "p2", "label": 0, "split": "val"},
        {"review_id": "r2", "sentence": "Tacos!", "pic_id": "p3", "label": True}]
BAD = [{"review_id": "nobody", "sentence": "x", "pic_id": "p1", "label": 1},
       {"review_id": "r1", "sentence": "x", "pic_id": "p3", "label": 0},
       {"review_id": "r1", "sentence": "x", "pic_id": "p1", "label": 7},
       {"review_id": "r1", "pic_id": "p1", "label": 1}]

ASKED = []


def accepted(review_ids):
    """The accepted tables' rows of the reviews the file names, as distill streams them from ROOT."""
    ASKED.append(review_ids.to_pylist())
    return (REVIEWS.filter(pa.compute.is_in(REVIEWS.column("review_id"), value_set=review_ids)),
            IMAGES.filter(pa.compute.is_in(IMAGES.column("review_id"), value_set=review_ids)))


def test_good_rows_become_pairs_and_bad_rows_are_quarantined_with_their_reason(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GOOD + BAD) + "\n\n")
    pairs, bad = read_labels(str(path), accepted)
    assert pairs.column_names == ["sentence_id", "text", "image_id", "label", "split"]
    assert pairs.schema.field("label").type == pa.int8()
    assert pairs.column("sentence_id").to_pylist() == ["r1#The patio.", "r1#The patio.", "r2#Tacos!"]
    assert pairs.column("label").to_pylist() == [1, 0, 1]
    assert pairs.column("split").to_pylist() == ["train", "val", "test"]  # the row's split, else its review's
    assert [b["reason"] for b in bad] == ["unknown_review", "photo_missing", "out_of_range", "missing_field"]
    assert [b["position"] for b in bad] == ["row 3", "row 4", "row 5", "row 6"]
    assert bad[3]["field"] == "sentence" and json.loads(bad[3]["record"])["pic_id"] == "p1"
    assert ASKED[-1] == ["nobody", "r1", "r2"]  # only the reviews the file names are looked up


def test_parquet_annotations_read_the_same(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "label": int(r["label"])} for r in GOOD]), path)
    pairs, bad = read_labels(str(path), accepted)
    assert pairs.num_rows == 3 and not bad


def test_a_missing_or_unparseable_file_is_one_error_naming_it(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        read_labels(str(tmp_path / "missing.jsonl"), accepted)
    (tmp_path / "broken.jsonl").write_text('{"review_id": \n')
    with pytest.raises(AnnotationError, match="broken.jsonl: cannot be read"):
        read_labels(str(tmp_path / "broken.jsonl"), accepted)
