import io
import json
import random

import pyarrow as pa
import pytest

from showcase_core.data.businesses import read_businesses
from showcase_core.data.gest import REASONS, detect_format, iter_jsonl, iter_s2, pic_id_from_url
from showcase_core.data.schema import QUARANTINE


def s2_bytes(obj) -> io.BytesIO:
    return io.BytesIO(json.dumps(obj).encode())


GOOD = {"user_id": "u1", "business_id": "b1", "rating": 5, "review_text": "The ramen was great.",
        "history_reviews": [["u1_b2", "Loved the gyoza."]], "pics": ["p1", "p2"]}


def one(items):
    items = list(items)
    assert len(items) == 1, items
    return items[0]


def test_s2_accepts_a_good_record_and_normalises_it():
    item = one(iter_s2(s2_bytes({"train": [GOOD]}), "f.json"))
    assert item.bad is None
    r = item.review
    assert r["review_id"] == "u1_b1" and r["split"] == "train" and r["rating"] == 5.0
    assert r["pic_ids"] == ["p1", "p2"]
    assert r["history"] == [{"review_id": "u1_b2", "text": "Loved the gyoza."}]
    assert r["position"] == "train[0]" and r["source"] == "f.json"


def test_s2_positions_count_per_split():
    items = list(iter_s2(s2_bytes({"train": [GOOD, GOOD], "val": [GOOD], "test": [GOOD]}), "f"))
    assert [i.position for i in items] == ["train[0]", "train[1]", "val[0]", "test[0]"]
    assert [i.review["split"] for i in items] == ["train", "train", "val", "test"]


@pytest.mark.parametrize("pics, expected", [
    (["a", "b"], ["a", "b"]),
    ([{"id": "a"}, {"id": "b"}], ["a", "b"]),
    ([{"url": ["https://lh5.googleusercontent.com/p/AF1QipXyz=w150-h150-k-no-p", "https://x/other"]}], ["AF1QipXyz"]),
    ([{"url": "https://host/p/abc=w10"}], ["abc"]),
    (["a", "a", {"id": "a"}], ["a"]),  # the same photo listed twice is one photo
])
def test_pics_accept_ids_id_objects_and_urls(pics, expected):
    item = one(iter_s2(s2_bytes({"train": [dict(GOOD, pics=pics)]}), "f"))
    assert item.review["pic_ids"] == expected


@pytest.mark.parametrize("pic", ["../../etc/passwd", "/abs/photo", "s3://other-bucket/x", "C:\\photos\\x",
                                 "a/b", "..", ".", {"id": "../x"}, {"url": "https://host/p/.."}])
def test_a_photo_id_that_could_leave_the_images_root_is_refused(pic):
    item = one(iter_s2(s2_bytes({"train": [dict(GOOD, pics=["fine", pic])]}), "f"))
    assert item.review is None and item.bad["reason"] == "unsafe_photo_id" and item.bad["field"] == "pics[1]"


def test_pic_id_from_url_strips_the_size_suffix_and_keeps_the_segment_as_written():
    assert pic_id_from_url("https://lh5.googleusercontent.com/p/AF1Qip-Ab_c=w150-h150-k-no-p") == "AF1Qip-Ab_c"
    assert pic_id_from_url("https://host/a/b/we%20ird?x=1") == "we%20ird"


def test_photo_ids_are_kept_exactly_as_given():
    """'a b' and 'a_b' are two photos, and images/café.jpg is café's photo: no id is rewritten."""
    item = one(iter_s2(s2_bytes({"train": [dict(GOOD, pics=["café", "a b", "a_b", " x", {"id": "ü"}])]}), "f"))
    assert item.review["pic_ids"] == ["café", "a b", "a_b", " x", "ü"]


@pytest.mark.parametrize("pic", ["p\ud83d", {"id": "\udc00"}])
def test_a_photo_id_holding_a_lone_surrogate_is_invalid_unicode(pic):
    record = json.dumps(dict(RAW, pics=["fine", pic])).encode()  # ASCII-escaped: "\\ud83d"
    item = one(iter_jsonl(io.BytesIO(record), "f", "raw"))
    assert item.review is None and (item.bad["reason"], item.bad["field"]) == ("invalid_unicode", "pics[1]")


@pytest.mark.parametrize("change, reason, field", [
    ({"user_id": None}, "missing_field", "user_id"),
    ({"business_id": ""}, "missing_field", "business_id"),
    ({"user_id": ["u"]}, "wrong_type", "user_id"),
    ({"rating": "five"}, "wrong_type", "rating"),
    ({"rating": True}, "wrong_type", "rating"),
    ({"rating": 7}, "out_of_range", "rating"),
    ({"review_text": "   "}, "empty_text", "review_text"),
    ({"review_text": 12}, "wrong_type", "review_text"),
    ({"pics": []}, "no_photos", "pics"),
    ({"pics": "p1"}, "wrong_type", "pics"),
    ({"pics": [{"nope": 1}]}, "wrong_type", "pics"),
    ({"history_reviews": [["only-one"]]}, "wrong_type", "history_reviews"),
])
def test_s2_quarantines_each_bad_field_with_its_reason(change, reason, field):
    record = {k: v for k, v in dict(GOOD, **change).items() if v is not None}
    item = one(iter_s2(s2_bytes({"train": [record]}), "f"))
    assert item.review is None
    assert item.bad["reason"] == reason and item.bad["field"] == field
    assert item.bad["position"] == "train[0]" and item.bad["source"] == "f"
    assert reason in REASONS
    assert json.loads(item.bad["record"])  # the raw record is kept for inspection


def test_s2_quarantines_non_object_records_and_unknown_splits():
    items = list(iter_s2(s2_bytes({"train": [42, GOOD], "extra": [GOOD]}), "f"))
    assert items[0].bad["reason"] == "wrong_type" and items[0].position == "train[0]"
    assert items[1].review is not None
    assert items[2].bad["reason"] == "unknown_split" and items[2].position == "extra[0]"


def test_s2_truncated_file_keeps_earlier_records_and_quarantines_the_rest():
    text = json.dumps({"train": [GOOD, GOOD]})[:-30]
    items = list(iter_s2(io.BytesIO(text.encode()), "f"))
    assert items[0].review is not None
    assert items[-1].bad["reason"] == "unparseable"
    assert items[-1].position == "after train[0]" or items[-1].position == "after train[1]"


RAW = {"business_id": "b1", "user_id": "u1", "rating": 4, "review_text": "Nice tacos.",
       "pics": [{"url": ["https://h/p/pic1=w1"]}]}


def test_raw_jsonl_positions_are_byte_offsets_and_bad_lines_are_quarantined():
    lines = [json.dumps(RAW), "{not json", json.dumps(dict(RAW, user_id="u2", rating=9)), ""]
    data = ("\n".join(lines) + "\n").encode()
    items = list(iter_jsonl(io.BytesIO(data), "raw.json", "raw"))
    assert [i.position for i in items] == ["byte 0", f"byte {len(lines[0]) + 1}",
                                           f"byte {len(lines[0]) + len(lines[1]) + 2}"]
    assert items[0].review["pic_ids"] == ["pic1"] and items[0].review["split"] is None
    assert items[1].bad["reason"] == "unparseable" and "{not json" in items[1].bad["record"]
    assert items[2].bad["reason"] == "out_of_range"


@pytest.mark.parametrize("fmt, record, text_field", [("raw", RAW, "review_text"),
                                                     ("googlelocal", {"user_id": "101", "gmap_id": "0x1:0x2",
                                                                      "rating": 4, "text": "Good.", "time": 1,
                                                                      "pics": [{"url": ["https://h/p/pic1=w1"]}]},
                                                      "text")])
def test_a_text_less_review_with_photos_is_kept_and_one_with_neither_is_quarantined(fmt, record, text_field):
    rows = [dict(record, user_id=f"u{i}", **{text_field: text}) for i, text in enumerate([None, "", "  \n "])]
    rows += [dict(record, user_id="u3", **{text_field: None, "pics": []}),
             dict(record, user_id="u4", **{text_field: None, "pics": None}),
             {k: v for k, v in dict(record, user_id="u5").items() if k != text_field},
             dict(record, user_id="u6", **{text_field: "no photos"}, pics=[])]
    items = list(iter_jsonl(io.BytesIO("\n".join(json.dumps(r) for r in rows).encode()), "f", fmt))
    kept = [i.review for i in items[:3]]
    assert [r["review_text"] for r in kept] == [None, None, None]
    assert [r["pic_ids"] for r in kept] == [["pic1"]] * 3
    assert [i.bad["reason"] for i in items[3:]] == ["no_text_or_photos", "no_text_or_photos", "missing_field",
                                                    "no_photos"]
    assert items[3].bad["field"] == "pics" and "no text" in items[3].bad["detail"]


def test_gest_s2_still_needs_a_text():
    for text, reason in ((None, "missing_field"), ("", "empty_text")):
        item = one(iter_s2(s2_bytes({"train": [dict(GOOD, review_text=text)]}), "f"))
        assert item.review is None and item.bad["reason"] == reason


def test_jsonl_chunks_cover_every_line_exactly_once():
    rng = random.Random(7)
    lines = [json.dumps(dict(RAW, user_id=f"u{i}", review_text="x" * rng.randint(1, 80))) for i in range(300)]
    data = ("\n".join(lines) + "\n").encode()
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        bounds = [0] + cuts + [len(data)]
        seen = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            seen += [i.review["user_id"] for i in iter_jsonl(io.BytesIO(data), "f", "raw", start, end)]
        assert seen == [f"u{i}" for i in range(300)]


def test_google_local_reviews():
    good = {"user_id": "101", "name": "Ann", "time": 1620000000000, "rating": 5, "text": "Great pho.",
            "pics": [{"url": ["https://lh5.googleusercontent.com/p/AF1Qip1=w150"]}], "resp": None,
            "gmap_id": "0x80c2c:0x1"}
    rows = [good, dict(good, text=None, pics=None), dict(good, pics=None), dict(good, time="yesterday"),
            dict(good, gmap_id=None)]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    items = list(iter_jsonl(io.BytesIO(data), "g.json", "googlelocal"))
    r = items[0].review
    assert (r["review_id"], r["business_id"], r["time_ms"], r["pic_ids"]) == ("101_0x80c2c:0x1", "0x80c2c:0x1",
                                                                           1620000000000, ["AF1Qip1"])
    assert [i.bad["reason"] for i in items[1:]] == ["no_text_or_photos", "no_photos", "wrong_type", "missing_field"]


@pytest.mark.parametrize("fmt, record", [("raw", RAW), ("googlelocal", dict(RAW, gmap_id="g1"))])
def test_an_integer_beyond_pythons_digit_limit_is_unparseable_not_a_crash(fmt, record):
    line = json.dumps(record).replace('"rating": 4', '"rating": ' + "9" * 5000).encode()
    item = one(iter_jsonl(io.BytesIO(line + b"\n"), "f", fmt))
    assert item.review is None and item.bad["reason"] == "unparseable" and "4300 digits" in item.bad["detail"]


def test_a_google_local_time_beyond_64_bits_is_out_of_range():
    good = {"user_id": "101", "gmap_id": "g1", "rating": 5, "text": "Great.", "pics": ["p1"]}
    rows = [dict(good, time=2**63 - 1), dict(good, time=2**63), dict(good, time=-2**70)]
    items = list(iter_jsonl(io.BytesIO("\n".join(json.dumps(r) for r in rows).encode()), "g", "googlelocal"))
    assert items[0].review["time_ms"] == 2**63 - 1
    assert [(i.bad["reason"], i.bad["field"]) for i in items[1:]] == [("out_of_range", "time")] * 2


def test_s2_records_under_a_key_with_a_dot_are_unknown_splits_not_lost():
    items = list(iter_s2(s2_bytes({"v.al": [GOOD, GOOD], "train": [GOOD], "x.y": {"item": [GOOD]}, "t.": 3}), "f"))
    assert [(i.position, i.bad and i.bad["reason"]) for i in items] == [
        ("v.al[0]", "unknown_split"), ("v.al[1]", "unknown_split"), ("train[0]", None), ("x.y", "wrong_type"),
        ("t.", "wrong_type")]


def test_detect_format():
    assert detect_format(b"", "/x/filter_all_t.json") == "s2"
    assert detect_format(b"", "s3://b/image_review_all.json") == "raw"
    assert detect_format(b' {"train": [{"user_id"', "data.json") == "s2"
    assert detect_format(json.dumps({"user_id": "1", "gmap_id": "g"}).encode() + b"\n", "x.json") == "googlelocal"
    assert detect_format(json.dumps(RAW).encode() + b"\n", "x.json") == "raw"
    assert detect_format(b"hello", "x.txt") is None


def test_a_lone_surrogate_in_text_is_kept_as_a_replacement_character_and_in_an_id_is_quarantined():
    import pyarrow as pa

    from showcase_core.data.schema import QUARANTINE, REVIEWS

    base = {"user_id": "u1", "gmap_id": "g1", "rating": 5, "pics": [{"url": ["https://h/p/pic1=w1"]}], "time": 1}
    lines = [json.dumps({**base, "text": "great \ud800 ramen \ud83d\ude00"}),  # a cut emoji, then a whole one
             json.dumps({**base, "user_id": "u\udc00x", "text": "fine"})]
    assert "\\ud800" in lines[0]  # json.dumps escapes it, as the data's ASCII-escaped JSON does
    kept, bad = list(iter_jsonl(io.BytesIO(("\n".join(lines) + "\n").encode()), "g.json", "googlelocal"))
    assert kept.review["review_text"] == "great \ufffd ramen \U0001f600"
    assert bad.review is None and bad.bad["reason"] == "invalid_unicode" and bad.bad["field"] == "user_id"
    review = {**kept.review, "history": [], "pic_ids": kept.review["pic_ids"]}
    pa.Table.from_pylist([review], schema=REVIEWS)  # both now encode: no UnicodeEncodeError in a writer
    pa.Table.from_pylist([bad.bad], schema=QUARANTINE)
    assert "\ufffd" in bad.bad["record"]


def test_business_places_keep_good_rows_and_quarantine_each_bad_one_with_its_reason():
    lines = [{"business_id": "b1", "latitude": 40.7, "longitude": -74.0, "name": "ignored"},
             {"business_id": "b2", "latitude": -33, "longitude": 151},  # integers are degrees too
             {"business_id": "b1", "latitude": 41.0, "longitude": -74.0},  # duplicate_business: the first is kept
             {"business_id": "b3", "latitude": 91.0, "longitude": 0.0},  # bad_coordinates
             {"business_id": "b3", "latitude": 0.0, "longitude": -180.5},  # bad_coordinates
             {"business_id": "b3", "latitude": "40.7", "longitude": 0.0},  # wrong_type
             {"business_id": "b3", "latitude": True, "longitude": 0.0},  # wrong_type
             {"business_id": "b3", "longitude": 0.0},  # missing_field
             {"business_id": "bnowhere", "latitude": 1.0, "longitude": 1.0}]  # unknown_business
    raw = "\n".join(json.dumps(line) for line in lines) + '\n{"business_id": "b3", "latitude": NaN, "longitude": 0}\n'
    result = read_businesses(io.BytesIO(raw.encode()), "businesses.jsonl", {"b1", "b2", "b3"})
    assert result["table"].to_pylist() == [{"business_id": "b1", "latitude": 40.7, "longitude": -74.0},
                                           {"business_id": "b2", "latitude": -33.0, "longitude": 151.0}]
    reasons = [(q["reason"], q["field"]) for q in result["quarantine"]]
    assert reasons == [("duplicate_business", "business_id"), ("bad_coordinates", "latitude"),
                       ("bad_coordinates", "longitude"), ("wrong_type", "latitude"), ("wrong_type", "latitude"),
                       ("missing_field", "latitude"), ("unknown_business", "business_id"),
                       ("bad_coordinates", "latitude")]
    assert all(q["reason"] in REASONS for q in result["quarantine"])


def test_business_places_with_an_over_range_integer_or_a_lone_surrogate_are_quarantined_not_a_crash():
    lines = [b'{"business_id": "b1", "latitude": ' + b"9" * 400 + b', "longitude": 0}',
             b'{"business_id": "b1", "latitude": 1, "longitude": -' + b"9" * 400 + b'}',
             b'{"business_id": "b\\ud83d", "latitude": 1, "longitude": 1}']
    for partitions in (1, 2):
        bad = [q for k in range(partitions) for q in read_businesses(io.BytesIO(b"\n".join(lines)), "b.jsonl", {"b1"},
                                                                     partition=(k, partitions))["quarantine"]]
        assert sorted((q["reason"], q["field"]) for q in bad) == [
            ("bad_coordinates", "latitude"), ("bad_coordinates", "longitude"), ("invalid_unicode", "business_id")]
        pa.Table.from_pylist(bad, schema=QUARANTINE)  # storable
