"""Property-based tests of the three review readers: mutate valid records every way real files break, and check that
no input raises, that every record comes out as exactly one review row or one quarantine row with a known reason, that
both kinds of row can be stored, and that accepted ids survive byte for byte.

``SHOWCASE_FUZZ_EXAMPLES`` sets the examples per reader (300 in make test; e.g. 5000 for a longer run).
"""

import io
import json
import os

import pyarrow as pa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from showcase_core.data.gest import REASONS, detect_format, iter_jsonl, iter_s2
from showcase_core.data.schema import QUARANTINE

EXAMPLES = int(os.environ.get("SHOWCASE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.data_too_large])

VALID = {
    "s2": {"user_id": "u1", "business_id": "b1", "rating": 5, "review_text": "The ramen was great.",
           "history_reviews": [["u1_b2", "Loved the gyoza."]], "pics": ["p1", "p2"]},
    "raw": {"business_id": "b1", "user_id": "u1", "rating": 4, "review_text": "Nice tacos.",
            "pics": [{"id": "p1"}]},
    "googlelocal": {"user_id": "1003", "name": "A", "time": 1600000000000, "rating": 5, "text": "Great",
                    "pics": [{"url": ["https://lh5.googleusercontent.com/p/AF1QipX=w150-h150-k-no-p"]}],
                    "resp": None, "gmap_id": "0x1:0x2"},
}
BOM = b"\xef\xbb\xbf"

# every kind of text, lone surrogates (a cut emoji) included; ids and texts of 100,000 characters
any_text = st.one_of(st.text(st.characters(exclude_categories=()), max_size=30), st.just(""), st.just("   "),
                     st.sampled_from(["x" * 100_000, "\ud800", "a\udc00b", "../../etc/passwd", "s3://b/k", "\x00",
                                      " u1", "b1 ", "\tx\r", "\ufffd"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(10 ** 30), 10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-1, 0, 5, 5.0001, -0.0]),
                    any_text)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(any_text, inner, max_size=4)), max_leaves=12)


@st.composite
def mutated_record(draw, fmt: str):
    """A valid record with a few fields replaced, removed or added, or the record replaced whole."""
    record = dict(VALID[fmt])
    if draw(st.integers(0, 19)) == 0:
        return draw(values)  # not an object at all
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(sorted(record) + ["extra", "pics", "pics", "rating", "user_id"]))
        action = draw(st.sampled_from(["replace", "replace", "delete", "pic_entry", "id"]))
        if action == "id":  # an id that is valid but unusual: white space around it, a number, non-ASCII
            id_field = "gmap_id" if fmt == "googlelocal" else draw(st.sampled_from(["user_id", "business_id"]))
            record[id_field] = draw(st.one_of(st.integers(0, 10 ** 21), st.text(min_size=1, max_size=8).map(
                lambda t: draw(st.sampled_from(["", " ", "\t"])) + t + draw(st.sampled_from(["", " ", "\n"])))))
        elif action == "delete":
            record.pop(field, None)
        elif action == "pic_entry":  # a photo list with odd entries
            record["pics"] = draw(st.lists(st.one_of(values, st.fixed_dictionaries({"id": values}),
                                                     st.fixed_dictionaries({"url": values})), max_size=4))
        else:
            record[field] = draw(values)
    return record


@st.composite
def line_of(draw, record) -> bytes:
    """One JSON line as the data has it (ASCII-escaped), then maybe broken at the byte level."""
    if draw(st.integers(0, 24)) == 0:
        depth = draw(st.integers(50, 5000))
        return b'{"user_id": ' + b"[" * depth + b"]" * depth + b"}"  # deep nesting
    data = json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(["as is"] * 6 + ["truncated", "invalid utf-8", "crlf", "bom", "nan literal"]))
    if kind == "truncated":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "invalid utf-8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
    elif kind == "crlf":
        data += b"\r"
    elif kind == "bom":
        data = BOM + data
    elif kind == "nan literal":
        data = data.replace(b'"rating": 4', b'"rating": NaN').replace(b'"rating": 5', b'"rating": -Infinity')
    return data


def check_rows(items, records: list | None = None) -> None:
    """Exactly one of review / quarantine row each, known reasons, storable rows, ids as given."""
    for i, item in enumerate(items):
        assert (item.review is None) != (item.bad is None), item
        if item.bad is not None:
            assert item.bad["reason"] in REASONS, item.bad
            pa.Table.from_pylist([item.bad], schema=QUARANTINE)
            continue
        review = item.review
        pa.array([review["user_id"], review["business_id"], review["review_text"], *review["pic_ids"]], pa.string())
        if records is not None and isinstance(records[i], dict):
            original = records[i]
            assert review["user_id"] == str(original["user_id"])
            business = original["gmap_id"] if "gmap_id" in VALID_FIELDS[review["format"]] else original["business_id"]
            assert review["business_id"] == str(business)
            assert 0 <= review["rating"] <= 5


VALID_FIELDS = {fmt: set(record) for fmt, record in VALID.items()}


def jsonl_fuzz(fmt: str):
    @FUZZ
    @given(st.data())
    def fuzz(data):
        records = data.draw(st.lists(mutated_record(fmt), min_size=1, max_size=4))
        lines = [data.draw(line_of(r)) for r in records]
        blob = b"\n".join(lines) + data.draw(st.sampled_from([b"\n", b"", b"\r\n"]))
        items = list(iter_jsonl(io.BytesIO(blob), "f.json", fmt))
        kept_lines = [line for line in blob.split(b"\n") if line.strip()]
        assert len(items) == len(kept_lines)  # one row per non-blank line, never a lost record
        for item, line, record in zip(items, kept_lines, [r for r, li in zip(records, lines) if li.strip()]):
            if item.review is not None:
                item.review["format"] = fmt
                check_rows([item], [record] if line.rstrip(b"\r") == json.dumps(record).encode() or
                           line.rstrip(b"\r") == json.dumps(record, ensure_ascii=False).encode("utf-8",
                                                                                                 "surrogatepass")
                           else None)
            else:
                check_rows([item])
        detect_format(blob[:4096], "f.json")  # never raises, whatever the first bytes
    return fuzz


test_raw_reader_never_raises_and_accounts_for_every_line = jsonl_fuzz("raw")
test_google_local_reader_never_raises_and_accounts_for_every_line = jsonl_fuzz("googlelocal")


@FUZZ
@given(st.data())
def test_gest_s2_reader_never_raises_and_accounts_for_every_record(data):
    splits = data.draw(st.dictionaries(st.sampled_from(["train", "val", "test", "dev"]),
                                       st.lists(mutated_record("s2"), max_size=4), min_size=1, max_size=3))
    # known limits of ijson's C parser, which follows the JSON standard: it stops at an integer beyond 64 bits and at
    # NaN or Infinity (JSON has neither; Python's json writes them), and the rest of the file is one unparseable row
    assume(not any(abs(n) >= 2 ** 63 for n in integers_in(splits)))
    broken = data.draw(st.sampled_from(["as is", "as is", "bom", "crlf", "truncated"]))
    # CRLF line ends between items only: a CR/LF inside a string is invalid JSON (a record's text may hold ", ")
    separators = (",\r\n", ": ") if broken == "crlf" else None
    try:
        blob = json.dumps(splits, allow_nan=False, separators=separators).encode("utf-8", "surrogatepass")
    except ValueError:
        assume(False)
    if broken == "bom":
        blob = BOM + blob
    elif broken == "truncated":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    items = list(iter_s2(io.BytesIO(blob), "filter_all_t.json"))
    records = [r for records in splits.values() for r in records]
    if broken != "truncated":
        assert len(items) == len(records)  # one row per record
        for item, record in zip(items, records):
            if item.review is not None:
                item.review["format"] = "s2"
            check_rows([item], [record])
    else:  # the records before the cut, each one row; then one row for the rest of the file
        check_rows(items)
        assert len(items) <= len(records) + 1
        if items and items[-1].bad is not None and items[-1].bad["reason"] == "unparseable":
            assert "rest of file skipped" in items[-1].bad["detail"]
    if broken == "bom":
        assert detect_format(blob[:4096], "data.json") == detect_format(blob[3:4096], "data.json")


def integers_in(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from integers_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from integers_in(v)
