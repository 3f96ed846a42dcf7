"""jobs.ingest through its real entry point, on local Ray, with ROOT on local disk and on SeaweedFS S3."""

import json
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from jobs import ingest
from jobs.common import run
from showcase_core import tables as delta
from showcase_core.store import Store, StoreError
from tests.conftest import world_on_s3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reasons_of(store: Store) -> list[str]:
    return sorted(store.read_table("quarantine").column("reason").to_pylist())


def report_of(store: Store) -> dict:
    files = store.fs.get_file_info(pafs.FileSelector(store.path("reports/ingest")))
    assert len(files) == 1
    return json.loads(store.fs.open_input_stream(files[0].path).read())


def test_ingest_s2_world_to_local_root(ray_local, tiny_world, tmp_path):
    world, summary = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    store = Store.open(root)
    assert store.read_table("reviews").num_rows == summary["reviews"]
    assert store.read_table("images").num_rows == summary["photos"]
    assert reasons_of(store) == sorted(e["reason"] for e in summary["planted_bad"])
    report = report_of(store)
    assert report["counts"]["records_in"] == summary["reviews"] + len(summary["planted_bad"])
    assert report["counts"]["reviews_out"] == summary["reviews"]
    assert report["counts"]["quarantined_by_reason"]["duplicate_review"] == 1
    assert report["summary"]["users"] == summary["users"]
    assert report["inputs"]["format"] == "s2" and report["timings_s"]["stage"] >= 0
    assert not store.exists(f"tables/_staging/{report['run_id']}")
    # images point at real files
    uri = store.read_table("images").column("uri")[0].as_py()
    assert os.path.exists(uri)


def test_owner_photos_and_places_are_ingested_and_their_bad_rows_quarantined(ray_local, tiny_world, tmp_path):
    world, summary = tiny_world
    places = tmp_path / "places.jsonl"
    place_lines = open(f"{world}/businesses.jsonl").read().splitlines()
    first_place = json.loads(place_lines[0])
    bad_places = [json.dumps({**first_place, "latitude": 95.0}),  # bad_coordinates (and the one line of b00000...)
                  place_lines[0],  # ...so this one is kept, and the next repeat is a duplicate_business
                  place_lines[0],
                  json.dumps({**first_place, "business_id": "bnowhere2"})]  # unknown_business
    places.write_text("\n".join(bad_places[:1] + place_lines[1:] + bad_places[1:]) + "\n")
    owners = tmp_path / "owners.jsonl"
    lines = open(f"{world}/owner_photos.jsonl").read().splitlines()
    first = json.loads(lines[0])
    bad = [json.dumps({"business_id": "bnowhere", "pic_id": first["pic_id"]}),  # unknown_business
           json.dumps({"business_id": first["business_id"], "pic_id": "onever"}),  # owner_photo_missing
           lines[0],  # duplicate_photo
           json.dumps({"business_id": first["business_id"], "pic_id": 7}),  # wrong_type
           json.dumps({"pic_id": first["pic_id"]}),  # missing_field
           json.dumps({"business_id": first["business_id"], "pic_id": "../" + first["pic_id"]}),  # unsafe_photo_id
           '{"business_id": "b00000", "pic_'.strip()]  # unparseable
    owners.write_text("\n".join(lines + bad) + "\n")
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json", "--images",
                                       f"{world}/images", "--owner-photos", str(owners), "--businesses",
                                       str(places)]) == 0
    store = Store.open(root)
    kept = store.read_table("businesses").to_pylist()
    assert sorted(kept, key=lambda p: p["business_id"]) == [json.loads(line) for line in place_lines]
    table = store.read_table("owner_photos")
    assert table.num_rows == summary["owner_photos"] == len(lines)
    assert sorted(table.column("image_id").to_pylist()) == sorted(json.loads(line)["pic_id"] for line in lines)
    assert all(os.path.exists(u) for u in table.column("uri").to_pylist())
    counts = report_of(store)["counts"]
    assert counts["owner_photos_out"] == len(lines) and counts["owner_photos_quarantined"] == len(bad)
    assert counts["businesses_out"] == len(place_lines) and counts["businesses_quarantined"] == 3
    assert counts["records_quarantined"] == len(summary["planted_bad"])  # reviews' records, not the sidecars'
    quarantined = counts["quarantined_by_reason"]
    for reason in ("unknown_business", "owner_photo_missing", "duplicate_photo", "wrong_type", "unparseable",
                   "unsafe_photo_id", "bad_coordinates", "duplicate_business"):
        assert quarantined.get(reason, 0) >= 1, reason
    details = store.read_table("quarantine").to_pylist()
    assert any(d["reason"] == "unknown_business" and "bnowhere" in d["detail"] for d in details)
    assert any(d["reason"] == "unknown_business" and "bnowhere2" in d["detail"] for d in details)

    # checked in hash partitions of the files' rows (a task per 256 bytes of a file: several each), the same tables, the
    # same quarantined lines, each once, and the same counts
    parts = str(tmp_path / "parts")
    assert run("ingest", ingest.main, ["--root", parts, "--gest", f"{world}/filter_all_t.json", "--images",
                                       f"{world}/images", "--owner-photos", str(owners), "--businesses",
                                       str(places), "--sidecar-task-mb", str(256 / 2**20)]) == 0
    split = Store.open(parts)
    for name, key in (("owner_photos", "image_id"), ("businesses", "business_id")):
        assert sorted(split.read_table(name).to_pylist(), key=lambda r: r[key]) == \
            sorted(store.read_table(name).to_pylist(), key=lambda r: r[key]), name
        files = len(delta.file_uris(split, f"tables/{name}"))
        assert files == -(-os.path.getsize(owners if name == "owner_photos" else places) // 256) > 1, name

    def sidecar_lines(s: Store) -> list:
        return sorted((q["source"], q["position"], q["reason"]) for q in s.read_table("quarantine").to_pylist()
                      if q["source"] in (str(owners), str(places)))

    assert sidecar_lines(split) == sidecar_lines(store) and len(sidecar_lines(store)) == len(bad) + 3
    assert {k: v for k, v in report_of(split)["counts"].items() if k.startswith(("owner_photos", "businesses"))} == \
        {k: v for k, v in counts.items() if k.startswith(("owner_photos", "businesses"))}

    again = str(tmp_path / "again")  # none: no table, and readers say so
    assert run("ingest", ingest.main, ["--root", again, "--gest", f"{world}/filter_all_t.json",
                                       "--owner-photos", "none", "--businesses", "none"]) == 0
    for table in ("owner_photos", "businesses"):
        with pytest.raises(StoreError, match=table):
            Store.open(again).read_table(table)


def test_sentences_checked_in_review_partitions_equal_one_task_and_quarantine_each_bad_line_once(ray_local, tiny_world,
                                                                                                 tmp_path):
    world, summary = tiny_world
    sentences = tmp_path / "sentences.jsonl"
    bad = [json.dumps({"review_id": "rnowhere", "sentence_index": 0, "text": "x"}),  # unknown_review
           "not json",  # unparseable
           json.dumps({"review_id": 5, "sentence_index": 0, "text": "x"})]  # wrong_type
    sentences.write_text(open(f"{world}/sentences.jsonl").read() + "\n".join(bad) + "\n")
    tables = {}
    for per_task in ("250000", "7"):  # one task; a task per 7 of the 53 reviews
        root = str(tmp_path / f"root-{per_task}")
        assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json",
                                           "--sentences", str(sentences), "--sentence-task-reviews", per_task]) == 0
        store = Store.open(root)
        quarantined = [(q["position"], q["reason"]) for q in store.read_table("quarantine").to_pylist()
                       if q["source"] == str(sentences)]
        tables[per_task] = (sorted(store.read_table("sentences").to_pylist(), key=lambda r: r["sentence_id"]),
                            sorted(quarantined), report_of(store)["counts"])
        assert len(store.read_table("sentences").column("sentence_id").unique()) == store.read_table(
            "sentences").num_rows
    (one, one_bad, one_counts), (parts, parts_bad, parts_counts) = tables["250000"], tables["7"]
    assert parts == one and len(one) > 100
    assert parts_bad == one_bad and {"unknown_review", "unparseable", "wrong_type"} <= {r for _, r in one_bad}
    for count in ("sentences_out", "sentences_quarantined", "sentence_photo_refs_removed"):
        assert parts_counts[count] == one_counts[count], count
    reviews = Store.open(str(tmp_path / "root-7")).read_table("reviews").num_rows
    assert len(delta.file_uris(Store.open(str(tmp_path / "root-7")), "tables/sentences")) == -(-reviews // 7) > 1


def test_ingest_raw_in_parallel_chunks_applies_gest_s1(ray_local, tiny_world, tmp_path):
    """Many chunks, and a plan in buckets of 7 reviews' keys (a task each) that decides as one bucket does."""
    world, summary = tiny_world
    root, bucketed = str(tmp_path / "root"), str(tmp_path / "bucketed")
    args = ["--gest", f"{world}/image_review_all.json", "--chunk-mb", "0.002", "--seed", "3"]
    assert run("ingest", ingest.main, ["--root", root, *args]) == 0
    assert run("ingest", ingest.main, ["--root", bucketed, *args, "--plan-bucket-rows", "7"]) == 0
    for name in ("reviews", "images", "quarantine"):
        assert Store.open(bucketed).read_table(name).equals(Store.open(root).read_table(name)), name
    store = Store.open(root)
    report = report_of(store)
    assert report["inputs"]["format"] == "raw"
    reasons = reasons_of(store)
    assert {"unparseable", "single_review_user", "duplicate_review"} <= set(reasons)
    users = store.read_table("reviews").column("user_id").to_pylist()
    assert min(users.count(u) for u in set(users)) >= 2
    counts = report["counts"]
    assert counts["reviews_out"] + counts["records_quarantined"] == counts["records_in"]


def test_an_input_without_an_acceptable_review_publishes_nothing(ray_local, tiny_world, tmp_path, capsys):
    """A wrong --format or a truncated upload must not replace the published tables with empty ones."""
    world, _ = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    store = Store.open(root)
    published = {name: store.table_version(name)["version"] for name in ("reviews", "images", "quarantine")}
    files = sorted(str(p) for p in (tmp_path / "root" / "tables").rglob("*") if p.is_file())
    bad = tmp_path / "bad.json"
    bad.write_text('{"user_id": "u1", "gmap_id": "b1"}\nnot json\n')
    capsys.readouterr()
    assert run("ingest", ingest.main, ["--root", root, "--gest", str(bad), "--format", "raw", "--images",
                                       f"{world}/images"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("showcase ingest:")]
    assert err == [f"showcase ingest: error: --gest {bad}: no review accepted of 2 records (quarantined: "
                   "missing_field 1, unparseable 1; --format raw); nothing published: the tables under ROOT stay as "
                   "they were"], err
    assert {name: store.table_version(name)["version"] for name in published} == published
    assert sorted(str(p) for p in (tmp_path / "root" / "tables").rglob("*") if p.is_file()) == files


def test_ingest_with_input_and_root_on_s3(ray_local, seaweed, tiny_world):
    world, summary = tiny_world
    root = world_on_s3(seaweed, world, "it")
    bucket = root.split("/")[2]
    store = Store.open(root)
    assert store.read_table("reviews").num_rows == summary["reviews"]
    images = store.read_table("images")
    assert images.num_rows == summary["photos"]
    assert images.column("uri")[0].as_py().startswith(f"s3://{bucket}/gest/images/")
    assert reasons_of(store) == sorted(e["reason"] for e in summary["planted_bad"])
    assert report_of(store)["outputs"]["reviews"]["uri"] == f"s3://{bucket}/root/tables/reviews"


def cli(*args, env=None, timeout=60):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "jobs.ingest", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--gest", "/nonexistent/filter_all_t.json"], "--gest /nonexistent/filter_all_t.json: no such file"),
    (["--format", "yelp"], "--format: input should be 'auto', 's2', 'raw' or 'googlelocal' (got 'yelp')"),
    (["--colour", "red"], "unknown setting --colour"),
    (["--chunk-mb", "lots"], "--chunk-mb: input should be a valid number, unable to parse string as a number (got 'lots')"),
    (["--chunk-mb", "0"], "--chunk-mb: input should be greater than or equal to 0.000001 (got '0')"),
    (["--images", "/nonexistent/images"], "--images /nonexistent/images: no such directory"),
])
def test_bad_config_exits_2_with_one_line(tiny_world, tmp_path, args, message):
    world, _ = tiny_world
    base = {"--root": str(tmp_path / "root"), "--gest": f"{world}/filter_all_t.json"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    result = cli(*[x for kv in base.items() for x in kv])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "root" / "tables")


def test_unreachable_s3_root_exits_2_quickly(tiny_world, seaweed):
    world, _ = tiny_world
    started = time.monotonic()
    result = cli("--root", "s3://bucket/root", "--gest", f"{world}/filter_all_t.json",
                 env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("showcase ingest: error: ROOT s3://bucket/root is not writable")
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 30


def test_missing_bucket_exits_2(tiny_world, seaweed):
    world, _ = tiny_world
    result = cli("--root", "s3://no-such-bucket-here/root", "--gest", f"{world}/filter_all_t.json")
    assert result.returncode == 2
    assert "S3 bucket 'no-such-bucket-here' of ROOT s3://no-such-bucket-here/root does not exist" in result.stderr


def test_showcase_console_script_dispatches_stages(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "showcase")
    ok = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "ingest" in ok.stdout and "make_world" in ok.stdout
    bad = subprocess.run([exe, "nosuchstage"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown stage" in bad.stderr
    world = subprocess.run([exe, "make_world", "--out", str(tmp_path / "w"), "--size", "tiny"],
                           capture_output=True, text=True)
    assert world.returncode == 0, world.stderr
    assert json.loads(world.stdout)["photos"] > 0
