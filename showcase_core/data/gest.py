"""Streaming readers for the three Gest source formats, with per-record validation.

Every reader yields ``Parsed`` items: either an accepted, normalised review (``.review``) or a quarantine
row (``.bad``) carrying a reason code from ``REASONS`` and the record's source position. Nothing is held
in memory beyond one record, so a 1 GB JSON-lines file streams in constant memory.

Formats
-------
- ``s2``: Gest-s2 ``filter_all_t.json``, one JSON object ``{"train": [...], "val": [...], "test": [...]}``,
  parsed incrementally with ijson. Positions read ``train[17]``.
- ``raw``: Gest-raw ``image_review_all.json``, JSON lines. Positions read ``byte 123456`` (the line's offset).
- ``googlelocal``: Google Local 2021 review JSON lines (``gmap_id`` is the business). Same positions.

Photo ids: a ``pics`` entry may be an id string, ``{"id": ...}`` or ``{"url": [...]}``. For a URL the id is the
last path segment without its ``=w150-h150...`` size suffix; photos are expected at ``<images>/<pic_id>.jpg``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import IO, Iterator
from urllib.parse import urlparse

import ijson

from .schema import SPLITS

REASONS = {
    "unparseable": "the line (or the file from this point) is not valid JSON",
    "wrong_type": "a field, or the record itself, has the wrong JSON type",
    "missing_field": "a required field is absent or null",
    "out_of_range": "a number outside its field's range (a rating outside 0..5, a time beyond 64 bits, a sentence "
                    "index outside 0..2**31-1)",
    "empty_text": "the review text is empty or only whitespace (Gest-s2, the explanation dataset, needs a text)",
    "no_photos": "the review lists no photos",
    "no_text_or_photos": "the review has neither a text nor a photo (Gest-raw, Google Local)",
    "unknown_split": "a Gest-s2 top-level key other than train/val/test",
    "duplicate_review": "a second review by the same user of the same business (the first one is kept)",
    "ambiguous_review_id": "a review whose id <user_id>_<business_id> is that of an earlier review of another user and "
                           "business (ids holding '_'; the first one is kept)",
    "photo_missing": "a listed photo is not under the images root (the review keeps its other photos)",
    "all_photos_missing": "none of the review's photos is under the images root",
    "single_review_user": "Gest-s1 rule: the user has only one usable review",
    "unknown_review": "an aligned sentence of a review that is not among the accepted reviews",
    "text_less_review": "an aligned sentence of a review that was kept without its text",
    "duplicate_sentence": "an aligned sentence whose review id and sentence index appeared earlier in the file (the "
                          "first one is kept)",
    "unknown_business": "an owner photo or a place of a business that no accepted review names",
    "owner_photo_missing": "an owner photo that is not under the images root",
    "duplicate_photo": "an owner photo whose id appeared earlier in the owner-photos file",
    "duplicate_business": "a business whose place appeared earlier in the businesses file (the first one is kept)",
    "bad_coordinates": "a latitude outside -90..90 or a longitude outside -180..180 (or not a finite number)",
    "invalid_unicode": "an id holds a lone UTF-16 surrogate (e.g. a cut emoji), which UTF-8 cannot store, or bytes "
                       "that are not UTF-8 (U+FFFD)",
    "unsafe_photo_id": "a photo id that is a path or a URL (/, \\, :, . or ..), which could name a file outside "
                       "the images root",
}

MAX_RECORD_CHARS = 2000
# JSON's \ud800-\udfff escapes, unpaired, decode to code points UTF-8 cannot encode: in text they become U+FFFD (the
# review is kept, the broken character marked); an id holding one is quarantined (it could not survive byte for byte)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# a photo is read from <images>/<pic_id>.jpg: an id with a separator, a drive or scheme colon, or a dot name could
# point elsewhere ("../../etc/x", "/abs", "s3://other-bucket/x"), so it is refused, not rewritten
_UNSAFE_PHOTO_ID = re.compile(r"[/\\:]|^\.{1,2}$")


def check_unicode(value: str, field: str) -> str:
    """``value`` if UTF-8 can store it as given; else RecordError ``invalid_unicode`` (an id is never repaired)."""
    if _LONE_SURROGATE.search(value) or "\ufffd" in value:
        raise RecordError("invalid_unicode", field, f"field {field!r} holds a lone UTF-16 surrogate or a character "
                                                    "that could not be decoded")
    return value


def check_photo_id(pic: str, field: str) -> str:
    """``pic`` if it names a file directly under the images root; else RecordError ``unsafe_photo_id`` (or
    ``invalid_unicode``)."""
    check_unicode(pic, field)
    if _UNSAFE_PHOTO_ID.search(pic):
        raise RecordError("unsafe_photo_id", field, f"{field} {pic[:80]!r} is a path or a URL, not a photo id "
                                                    "(photos are <images>/<pic_id>.jpg)")
    return pic


def storable(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate replaced by U+FFFD, so that Arrow and Parquet can store it."""
    return _LONE_SURROGATE.sub("\ufffd", text)


@dataclass
class Parsed:
    position: str
    review: dict | None = None
    bad: dict | None = None


class RecordError(Exception):
    def __init__(self, reason: str, field: str | None, detail: str):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def quarantine_row(source: str, position: str, reason: str, field: str | None, detail: str, record) -> dict:
    if not isinstance(record, str):
        try:
            record = json.dumps(record, ensure_ascii=False, default=str)
        except RecursionError:  # parsed (ijson builds any depth) but too deep to write back
            record = f"<a JSON {type(record).__name__} nested too deeply to show>"
        except (TypeError, ValueError):
            record = repr(record)
    record = storable(record)
    return {
        "source": source,
        "position": position,
        "reason": reason,
        "field": field,
        "detail": storable(detail),  # it may quote an id that holds a lone surrogate
        "record": record[:MAX_RECORD_CHARS],
    }


# -- field validation -------------------------------------------------------------------------------

def loads_line(text: bytes):
    """One JSON line -> its value; RecordError ``unparseable`` for invalid JSON, invalid UTF-8, an integer of more
    digits than Python converts (4,300) or nesting deeper than the parser's recursion limit."""
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError and the integer digit limit
        raise RecordError("unparseable", None, f"invalid JSON: {str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise RecordError("unparseable", None, "invalid JSON: nested deeper than the parser's limit") from None


def read_json_lines(stream: IO[bytes], source: str, check, unreadable: bool = True) -> tuple[list, list[dict]]:
    """A sidecar JSON-lines file, record by record: ``check(obj)`` turns a JSON object into a row, None (a record
    another reader takes) or raises RecordError. Returns (rows, quarantine rows); a line that is not JSON, not an
    object (unless ``unreadable`` is False: another reader quarantines those) or fails the check is quarantined with
    its byte position."""
    rows, bad, offset = [], [], 0
    for line in stream:
        position = f"byte {offset}"
        offset += len(line)
        text = line.strip()
        if not text:
            continue
        try:
            obj = loads_line(text)
            if not isinstance(obj, dict):
                raise RecordError("wrong_type", None, "record must be a JSON object")
        except RecordError as e:
            if unreadable:
                bad.append(quarantine_row(source, position, e.reason, e.field, e.detail,
                                          text.decode("utf-8", "replace")))
            continue
        try:
            row = check(obj)
        except RecordError as e:
            bad.append(quarantine_row(source, position, e.reason, e.field, e.detail, text.decode("utf-8", "replace")))
            continue
        if row is not None:
            rows.append(row)
    return rows, bad


def _field(obj: dict, name: str):
    value = obj.get(name)
    if value is None:
        raise RecordError("missing_field", name, f"field {name!r} is missing")
    return value


def _id(obj: dict, name: str) -> str:
    value = _field(obj, name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError("wrong_type", name, f"field {name!r} must be a string id, got {type(value).__name__}")
    value = str(value)  # as given, byte for byte: white space around an id is part of it
    if not value.strip():
        raise RecordError("missing_field", name, f"field {name!r} is empty")
    return check_unicode(value, name)


def _rating(obj: dict, name: str = "rating") -> float:
    value = _field(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_type", name, f"field {name!r} must be a number, got {type(value).__name__}")
    if not 0 <= value <= 5:
        raise RecordError("out_of_range", name, f"field {name!r} is {value}, outside 0..5")
    return float(value)


def _text(obj: dict, name: str, optional: bool = False) -> str | None:
    """The review text, stripped. ``optional`` (Gest-raw, Google Local): a null, empty or blank text is None, a
    text-less review whose photos still count; the field itself must be there. Gest-s2 needs a text."""
    if name not in obj:
        raise RecordError("missing_field", name, f"field {name!r} is missing")
    value = obj[name]
    if value is not None and not isinstance(value, str):
        raise RecordError("wrong_type", name, f"field {name!r} must be a string, got {type(value).__name__}")
    if value is None or not value.strip():
        if optional:
            return None
        raise RecordError("missing_field" if value is None else "empty_text", name,
                          f"field {name!r} is {'null' if value is None else 'empty'}")
    return storable(value.strip())


def pic_id_from_url(url: str) -> str:
    """Gest/Google photo URL -> the id used for ``images/<pic_id>.jpg``: its last path segment as written, without
    the ``=w150-h150...`` size suffix."""
    segment = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    return segment.split("=", 1)[0]


def _pics(obj: dict, name: str = "pics", null_is_empty: bool = False) -> list[str]:
    value = obj.get(name)
    if value is None:
        if null_is_empty and name in obj:
            raise RecordError("no_photos", name, f"field {name!r} is null")
        raise RecordError("missing_field", name, f"field {name!r} is missing")
    if not isinstance(value, list):
        raise RecordError("wrong_type", name, f"field {name!r} must be a list, got {type(value).__name__}")
    ids: list[str] = []
    for i, entry in enumerate(value):
        pic = None
        if isinstance(entry, str):
            pic = entry
        elif isinstance(entry, dict) and isinstance(entry.get("id"), str):
            pic = entry["id"]
        elif isinstance(entry, dict) and "url" in entry:
            urls = entry["url"]
            urls = [urls] if isinstance(urls, str) else urls
            if isinstance(urls, list) and urls and isinstance(urls[0], str):
                pic = pic_id_from_url(urls[0])
        if not pic or not pic.strip():
            raise RecordError("wrong_type", name, f"{name}[{i}] is not a photo id, {{'id': ...}} or {{'url': [...]}}")
        pic = check_photo_id(pic, f"{name}[{i}]")  # as given: two ids that differ only in a character are two photos
        if pic not in ids:
            ids.append(pic)
    if not ids:
        raise RecordError("no_photos", name, f"field {name!r} is an empty list")
    return ids


def _history(obj: dict, name: str = "history_reviews") -> list[dict]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError("wrong_type", name, f"field {name!r} must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise RecordError("wrong_type", name, f"{name}[{i}] must be [review_key, text]")
        out.append({"review_id": storable(item[0]), "text": storable(item[1])})
    return out


# -- record normalisers -----------------------------------------------------------------------------

def _object(obj) -> dict:
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", None, f"record must be a JSON object, got {type(obj).__name__}")
    return obj


def _photos_of(obj: dict, name: str, text: str | None, null_is_empty: bool = False) -> list[str]:
    """The review's photo ids; a review with neither a text nor a photo is ``no_text_or_photos``."""
    if text is None and name in obj and (obj[name] is None or obj[name] == []):
        raise RecordError("no_text_or_photos", name, f"field {name!r} is {'null' if obj[name] is None else 'empty'} "
                                                     "and the review has no text")
    return _pics(obj, name, null_is_empty)


def _gest_review(obj, split: str | None, history: list[dict]) -> dict:
    """The fields Gest-s2 and Gest-raw share. Gest-raw (``split`` None) keeps a text-less review with photos."""
    user, business = _id(obj, "user_id"), _id(obj, "business_id")
    rating, text = _rating(obj), _text(obj, "review_text", optional=split is None)
    return {
        "review_id": f"{user}_{business}",
        "user_id": user,
        "business_id": business,
        "rating": rating,
        "review_text": text,
        "split": split,
        "pic_ids": _photos_of(obj, "pics", text),
        "history": history,
        "time_ms": None,
    }


def normalize_s2(obj, split: str) -> dict:
    obj = _object(obj)
    return _gest_review(obj, split, _history(obj))


def normalize_raw(obj) -> dict:
    return _gest_review(_object(obj), None, [])


def normalize_googlelocal(obj) -> dict:
    obj = _object(obj)
    user, business = _id(obj, "user_id"), _id(obj, "gmap_id")
    text = _text(obj, "text", optional=True)
    when = obj.get("time")
    if when is not None and (isinstance(when, bool) or not isinstance(when, int)):
        raise RecordError("wrong_type", "time", f"field 'time' must be integer milliseconds, got {type(when).__name__}")
    if when is not None and not -2**63 <= when < 2**63:
        raise RecordError("out_of_range", "time", f"field 'time' is {when}, beyond 64-bit milliseconds")
    return {
        "review_id": f"{user}_{business}",
        "user_id": user,
        "business_id": business,
        "rating": _rating(obj),
        "review_text": text,
        "split": None,
        "pic_ids": _photos_of(obj, "pics", text, null_is_empty=True),
        "history": [],
        "time_ms": when,
    }


NORMALIZERS = {"raw": normalize_raw, "googlelocal": normalize_googlelocal}
FORMATS = ("s2", "raw", "googlelocal")


def _normalise(source: str, position: str, obj, normalise, *args) -> Parsed:
    try:
        review = normalise(obj, *args)
    except RecordError as e:
        return Parsed(position, bad=quarantine_row(source, position, e.reason, e.field, e.detail, obj))
    review["source"], review["position"] = source, position
    return Parsed(position, review=review)


# -- readers ----------------------------------------------------------------------------------------

UTF8_BOM = b"\xef\xbb\xbf"


# the JSON escape of a UTF-16 surrogate (\\ud800 to \\udfff) that is not half of a pair, after an even run of
# backslashes (so its own backslash is not escaped): ijson's C parser fails on one, and with it the rest of the file
_LONE_SURROGATE_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)(?:\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})")


class _RepairedStream:
    """A Gest-s2 byte stream as ijson can parse all of it: without a leading UTF-8 byte-order mark (some Windows
    editors write one), invalid UTF-8 decoded as U+FFFD, and lone-surrogate escapes (a cut emoji) written as U+FFFD's
    escape. In a text that is the replacement character, as in the JSON-lines readers; an id that holds one is
    quarantined as ``invalid_unicode``. One read's bytes (plus the rest of a string a read cut) are held at a time."""

    def __init__(self, stream: IO[bytes], read_size: int = 1 << 16):
        import codecs

        self.stream, self.read_size = stream, read_size
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.out, self.first, self.done = "", b"", True, False

    def _fill(self) -> None:
        data = self.stream.read(self.read_size)
        if self.first:
            data, self.first = data.removeprefix(UTF8_BOM), False
        self.done = not data
        self.text += self.decoder.decode(data, final=self.done)
        # up to the last quote, comma, colon or white space: an escape (or a pair of them, or a run of backslashes)
        # holds none of these, so none is cut in two; the rest waits for the next read
        cut = len(self.text) if self.done else max(self.text.rfind(c) for c in '",: \n') + 1
        ready, self.text = self.text[:cut], self.text[cut:]
        self.out += _LONE_SURROGATE_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", ready).encode("utf-8")

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson reads 0 bytes first, to learn whether the stream gives bytes or text
            return b""
        while not self.done and (size is None or size < 0 or len(self.out) < size):
            self._fill()
        size = len(self.out) if size is None or size < 0 else size
        chunk, self.out = self.out[:size], self.out[size:]
        return chunk


def _value(events, event: str, value):
    """The JSON value that starts with (event, value), its nested events read from ``events``."""
    if event not in ("start_map", "start_array"):
        return value
    builder = ijson.ObjectBuilder()
    builder.event(event, value)
    depth = 1
    for _, ev, val in events:
        builder.event(ev, val)
        depth += ev in ("start_map", "start_array")
        depth -= ev in ("end_map", "end_array")
        if depth == 0:
            break
    return builder.value


def iter_s2(stream: IO[bytes], source: str) -> Iterator[Parsed]:
    """Stream a Gest-s2 ``{"train": [...], "val": [...], "test": [...]}`` file record by record."""
    events = ijson.parse(_RepairedStream(stream), use_float=True)
    counts: dict[str, int] = {}
    last = "start of file"
    # by nesting depth, not by ijson's dotted prefix: a key may hold a dot ("v.al.item" is no split's item path)
    depth, split, listed = 0, None, False
    try:
        for _, event, value in events:
            if event in ("end_map", "end_array"):
                depth -= 1
                continue
            if depth == 0 and event != "start_map":
                yield Parsed("top level", bad=quarantine_row(source, "top level", "wrong_type", None,
                                                             "file must be one JSON object of splits", ""))
                return
            if depth == 1 and event == "map_key":
                split = value
                continue
            if depth == 1:  # the split's value
                listed = event == "start_array"
                if not listed:
                    yield Parsed(split, bad=quarantine_row(source, split, "wrong_type", split,
                                                           f"split {split!r} must be a list", str(value)))
            elif depth == 2 and listed:  # one record
                index = counts.get(split, 0)
                counts[split] = index + 1
                position = last = f"{split}[{index}]"
                obj = _value(events, event, value)
                if split not in SPLITS:
                    yield Parsed(position, bad=quarantine_row(source, position, "unknown_split", None,
                                                              f"top-level key {split!r} is not train/val/test", obj))
                else:
                    yield _normalise(source, position, obj, normalize_s2, split)
                continue
            depth += event in ("start_map", "start_array")
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as e:
        position = f"after {last}"
        yield Parsed(position, bad=quarantine_row(source, position, "unparseable", None,
                                                  f"invalid JSON, rest of file skipped: {str(e).splitlines()[0][:200]}", ""))


def iter_jsonl(stream: IO[bytes], source: str, fmt: str, start: int = 0, end: int | None = None) -> Iterator[Parsed]:
    """Stream the JSON lines whose first byte lies in [start, end) of a seekable binary stream."""
    normalise = NORMALIZERS[fmt]
    if start > 0:
        stream.seek(start - 1)
        stream.readline()  # finish the line that straddles start; it belongs to the previous chunk
    else:
        stream.seek(0)
    while True:
        offset = stream.tell()
        if end is not None and offset >= end:
            return
        line = stream.readline()
        if not line:
            return
        text = line.strip()
        if not text:
            continue
        position = f"byte {offset}"
        try:
            obj = loads_line(text)
        except RecordError as e:
            yield Parsed(position, bad=quarantine_row(source, position, e.reason, None, e.detail,
                                                      text.decode("utf-8", "replace")))
            continue
        yield _normalise(source, position, obj, normalise)


def detect_format(head: bytes, name: str) -> str | None:
    """Guess the format from the file name, then from its first bytes; None when unsure."""
    if name.endswith("filter_all_t.json"):
        return "s2"
    if name.endswith("image_review_all.json"):
        return "raw"
    stripped = head.removeprefix(UTF8_BOM).lstrip()
    if stripped.startswith(b"{") and re.match(rb'\{\s*"(train|val|test)"\s*:\s*\[', stripped):
        return "s2"
    first = stripped.split(b"\n", 1)[0]
    if b'"gmap_id"' in first:
        return "googlelocal"
    if b'"business_id"' in first:
        return "raw"
    return None


# -- annotation files -------------------------------------------------------------------------------------------

LABEL_COLUMNS = ("review_id", "sentence", "pic_id", "label")


class AnnotationError(Exception):
    """An annotation file that is missing or cannot be parsed at all. One line, naming the file."""


def _label_rows(uri: str) -> list[dict]:
    """The rows of an annotation file; AnnotationError (one line, naming the file and for JSON lines the line) if it
    is missing, or a line is not UTF-8, not JSON or not an object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store import filesystem_for, read_bytes

    fs, path = filesystem_for(uri)
    try:
        if path.endswith(".parquet"):
            return pq.read_table(path, filesystem=fs).to_pylist()
        lines = read_bytes(fs, path).removeprefix(UTF8_BOM).splitlines()
    except FileNotFoundError:
        raise AnnotationError(f"{uri}: no such file") from None
    except pa.ArrowInvalid as e:
        raise AnnotationError(f"{uri}: cannot be read ({str(e).splitlines()[0]})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise AnnotationError(f"{uri}: cannot be read (line {number} is not UTF-8)") from None
        except (ValueError, RecursionError) as e:
            raise AnnotationError(f"{uri}: cannot be read (line {number}: {str(e).splitlines()[0][:200]})") from None
        if not isinstance(row, dict):
            raise AnnotationError(f"{uri}: cannot be read (line {number} is a JSON {type(row).__name__}, "
                                  "not an object)")
        rows.append(row)
    return rows


def read_labels(uri: str, accepted):
    """An annotation file of (sentence, photo, label) rows -> (pairs, quarantine rows).

    The file is Parquet (``.parquet``) or JSON lines of rows ``review_id, sentence, pic_id, label`` (0/1) and
    optionally ``split``; without a split a pair takes its review's. ``accepted(review_ids)`` (an Arrow array of the
    file's review ids) gives the accepted tables' rows of those reviews (at least): (reviews (review_id, split), images
    (image_id, review_id)). A row naming an unknown review, a photo not of its review, a label that is not 0/1, or
    missing a field or holding one of the wrong type is quarantined with its reason. The pairs table has the columns
    ``sentence_id`` (``<review_id>#<sentence>``), ``text``, ``image_id``, ``label`` (int8) and ``split``. Memory: the
    file's rows and the accepted rows of its reviews.
    """
    import pyarrow as pa

    rows = _label_rows(uri)
    named = {r["review_id"] for r in rows if isinstance(r.get("review_id"), str)}
    reviews, images = accepted(pa.array(sorted(r for r in named if storable(r) == r), pa.string()))
    split_of = dict(zip(reviews.column("review_id").to_pylist(), reviews.column("split").to_pylist()))
    photos = set(zip(images.column("image_id").to_pylist(), images.column("review_id").to_pylist()))
    out, bad = {"sentence_id": [], "text": [], "image_id": [], "label": [], "split": []}, []
    for n, row in enumerate(rows):
        missing = [c for c in LABEL_COLUMNS if row.get(c) is None]
        wrong = [c for c in ("review_id", "sentence", "pic_id", "split")
                 if row.get(c) is not None and not isinstance(row[c], str)]
        if missing:
            bad.append(quarantine_row(uri, f"row {n}", "missing_field", missing[0], f"field {missing[0]!r} is missing",
                                      row))
        elif wrong:
            bad.append(quarantine_row(uri, f"row {n}", "wrong_type", wrong[0], f"field {wrong[0]!r} must be a string, "
                                      f"got {type(row[wrong[0]]).__name__}", row))
        elif row["review_id"] not in split_of:
            bad.append(quarantine_row(uri, f"row {n}", "unknown_review", "review_id",
                                      f"review {row['review_id']} is not among the accepted reviews", row))
        elif (row["pic_id"], row["review_id"]) not in photos:
            bad.append(quarantine_row(uri, f"row {n}", "photo_missing", "pic_id",
                                      f"photo {row['pic_id']} is not a photo of review {row['review_id']}", row))
        elif row["label"] not in (0, 1, True, False):
            bad.append(quarantine_row(uri, f"row {n}", "out_of_range", "label", "label must be 0 or 1", row))
        else:
            text = storable(row["sentence"])
            for key, value in (("sentence_id", f"{row['review_id']}#{text}"), ("text", text),
                               ("image_id", row["pic_id"]), ("label", int(row["label"])),
                               ("split", storable(row.get("split") or split_of[row["review_id"]]))):
                out[key].append(value)
    return pa.table({**out, "label": pa.array(out["label"], pa.int8())}), bad
