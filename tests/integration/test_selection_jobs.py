"""jobs.train_dpp (shared harness, resume after a crashed worker) and jobs.evaluate --stage selection."""

import glob
import json
import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from jobs import evaluate, harness, train_dpp
from jobs.common import run
from showcase_core import registry
from showcase_core.selection.data import load_selection_data
from showcase_core.selection.kernel import load_dpp
from showcase_core.selection.training import evaluate_picks, select
from showcase_core.store import Store
from tests.conftest import copy_root, stage_reports


@pytest.fixture(scope="module")
def embedded_root(tiny_embedded, tmp_path_factory):
    template, encoder_id = tiny_embedded
    return copy_root(template, tmp_path_factory, "sel"), encoder_id


def latest_report(store: Store, stage: str) -> dict:
    return stage_reports(store, stage)[-1]


def test_train_dpp_resumes_after_a_crashed_worker_and_evaluate_writes_table_3(embedded_root, monkeypatch):
    root, encoder_id = embedded_root
    monkeypatch.setenv(harness.FAULT_ENV, "2")
    args = ["--root", root, "--encoder", encoder_id, "--epochs", "6", "--batch-size", "16", "--eval-every", "3",
            "--checkpoint-every", "1", "--modalities", "img,text,img+text",
            "--cpus-per-worker", "1", "--run-name", "dpp-crash"]
    assert run("train_dpp", train_dpp.main, args) == 0
    store = Store.open(root)
    monkeypatch.delenv(harness.FAULT_ENV)
    latest = registry.latest(store, "dpp")
    assert sorted(latest.variants) == ["img", "img+text", "text"] and latest.encoder_id == encoder_id
    assert sorted(latest.metrics) == sorted(latest.variants)
    for modality, uri in latest.variants.items():
        model, config = load_dpp(uri)
        assert config["modality"] == modality and config["encoder_id"] == encoder_id
        card = json.loads(open(os.path.join(uri, "card.json")).read())
        assert [h["epoch"] for h in card["history"]] == list(range(6))
        # the saved weights are those of the evaluated epoch with the best val F1@3, kept across the crash
        evaluated = {h["epoch"] + 1: h["val_f1"] for h in card["history"] if "val_f1" in h}
        assert sorted(evaluated) == [3, 6]
        assert card["metrics"]["val_f1"] == max(evaluated.values()) == evaluated[card["selected_epoch"]]
        val = load_selection_data(store, encoder_id, 128, ("val",))
        scores = evaluate_picks(val, val.splits["val"], select(model, val, val.splits["val"]))
        assert scores["f1"] == pytest.approx(card["metrics"]["val_f1"], abs=1e-9)
    # the examples Ray Data built from the feature tables are those the raw tables give: the same counts (and the
    # val scores above, computed by the workers on the streamed examples, are those of the in-memory ones)
    full = load_selection_data(store, encoder_id, 128, ("train", "val"))
    assert latest_report(store, "train_dpp")["counts"] == {"train_examples": len(full.splits["train"]),
                                                           "val_examples": len(full.splits["val"]),
                                                           "skipped": full.skipped}
    # the three kernels trained in one run: the fault fired once, and that run resumed from its checkpoint
    cards = [json.loads(open(os.path.join(uri, "card.json")).read()) for uri in latest.variants.values()]
    assert {card["run_name"] for card in cards} == {"dpp-crash"}
    resumed = [card["resumed_after_epochs"] for card in cards]
    # after the checkpoint of epoch 3, or of epoch 2 when the crash beat Ray Train's poll of the last report
    assert resumed[0] == resumed[1] == resumed[2] and len(resumed[0]) == 1 and resumed[0][0] in (1, 2), resumed

    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "selection"]) == 0
    table = latest_report(store, "evaluate")["selection"]
    assert [r["method"] for r in table["rows"]] == ["random", "img", "text", "img+text"]
    for row in table["rows"]:
        assert set(row) >= {"precision", "recall", "f1", "div"} and 0 <= row["f1"] <= 1 and 0 <= row["div"] <= 2
    # Ray Data's tasks scored the feature tables' test examples block by block: the scores of the in-memory examples
    # of the raw tables (no business here has more photos than the tables keep), the random row's P and R exactly
    held = load_selection_data(store, encoder_id, 128, ("test",))
    test = held.splits["test"]
    assert table["examples"] == len(test) > 0 and table["skipped"] == held.skipped["test"]
    assert table["max_ground_set"] == 128
    rows = {r["method"]: r for r in table["rows"]}
    for modality, uri in latest.variants.items():
        want = evaluate_picks(held, test, select(load_dpp(uri)[0], held, test), 3)
        assert {m: rows[modality][m] for m in want} == pytest.approx(want, abs=1e-9), modality
    ground, targets = (test.ground >= 0).sum(1), (test.y_pos >= 0).sum(1)
    hits = np.minimum(3, ground) * targets / ground
    assert rows["random"]["precision"] == pytest.approx(np.mean(hits / 3), abs=1e-12)
    assert rows["random"]["recall"] == pytest.approx(np.mean(hits / targets), abs=1e-12)
    assert rows["random"]["draws"] == 20
    markdowns = [i.path for i in store.fs.get_file_info(pafs.FileSelector(store.path("reports/evaluate"), recursive=True))
                 if i.path.endswith("selection.md")]
    text = open(markdowns[0]).read()
    lines = [line for line in text.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split("|")[1].strip() for line in lines] == ["random", "img", "text", "img+text"]
    assert "(29.09)" in text


def test_train_dpp_checkpoints_every_n_epochs_and_after_the_last(embedded_root):
    import torch

    root, encoder_id = embedded_root
    args = ["--root", root, "--encoder", encoder_id, "--epochs", "8", "--checkpoint-every", "3", "--modalities", "img",
            "--cpus-per-worker", "1", "--run-name", "dpp-cadence"]
    assert run("train_dpp", train_dpp.main, args) == 0
    run_dir = os.path.join(root, "checkpoints", "train_dpp", "dpp-cadence")
    saved = sorted(torch.load(path, weights_only=False)["extra"]["epoch"]
                   for path in glob.glob(os.path.join(run_dir, "checkpoint_*", "state.pt")))
    # the two kept (num_to_keep=2): after epoch 6 (every 3rd) and after the last (8); one per epoch would keep 7 and 8
    assert saved == [5, 7]


def test_train_dpp_without_feature_tables_or_embedded_train_photos_exits_2_in_one_line(embedded_root, tmp_path, capsys):
    import shutil

    import pyarrow.compute as pc
    from deltalake import write_deltalake

    from showcase_core import tables as delta
    from showcase_core.encoders.embed import embeddings_dir

    template, encoder_id = embedded_root
    root = str(tmp_path / "root")
    shutil.copytree(template, root)
    store = Store.open(root)
    # the examples come from the feature tables: a ground set larger than they keep, or none, is one line too
    capsys.readouterr()
    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id, "--max-ground", "129"]) == 2
    assert capsys.readouterr().err.strip() == (
        "showcase train_dpp: error: --max-ground 129 is more than the feature tables keep per business (128): lower "
        "it or rerun `showcase features --max-ground-set 129`")
    store.delete_dir(f"features/{encoder_id}")
    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"showcase train_dpp: error: no feature tables for encoder {encoder_id}") and "\n" not in err
    reviews = store.read_table("reviews", ["split", "pic_ids"])
    train_photos = pc.list_flatten(reviews.filter(pc.equal(reviews.column("split"), "train")).column("pic_ids"))
    images = embeddings_dir(encoder_id, "images")
    embedded = delta.read(store, images)
    kept = embedded.filter(pc.invert(pc.is_in(embedded.column("id"), value_set=train_photos)))
    assert 0 < kept.num_rows < embedded.num_rows  # the val and test photos stay embedded
    write_deltalake(store.path(images), kept, mode="overwrite")
    args = ["--root", root, "--encoder", encoder_id, "--epochs", "1"]
    capsys.readouterr()
    assert run("train_dpp", train_dpp.main, args) == 2
    assert capsys.readouterr().err.strip() == ("showcase train_dpp: error: no training examples: no train-split "
                                               "review has embedded photos")
    store.delete_dir(embeddings_dir(encoder_id, "texts"))
    assert run("train_dpp", train_dpp.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"showcase train_dpp: error: no texts embeddings for encoder {encoder_id}") and "\n" not in err


def test_train_dpp_bad_settings_exit_2(embedded_root, tmp_path):
    root, encoder_id = embedded_root
    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id, "--modalities", "video"]) == 2
    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", "no-such-encoder"]) == 2
    assert run("train_dpp", train_dpp.main, ["--root", root, "--encoder", encoder_id, "--checkpoint-every", "0"]) == 2
    assert run("evaluate", evaluate.main, ["--root", str(tmp_path / "empty"), "--stage", "selection"]) == 2
    assert run("evaluate", evaluate.main, ["--root", root, "--stage", "poetry"]) == 2
