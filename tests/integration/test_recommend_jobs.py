"""train_recommender -> recommend -> nightly --candidates latest on the tiny world, ROOT on local disk and on
SeaweedFS S3: the models are published, the candidates table is read by Polars and deltalake with no project code,
no user is recommended a business they reviewed, and the nightly accounts for every candidate of the date."""

import polars as pl
import pytest
from deltalake import DeltaTable

from jobs import nightly, recommend, train_recommender
from jobs.common import run
from tests.conftest import copy_root
from showcase_core import registry
from showcase_core.encoders.clip import load_encoder
from showcase_core.store import Store
from showcase_core.tables import storage_options

DATE = "2026-11-27"
TRAIN = ["--epochs", "2", "--batch-size", "16", "--eval-every", "1", "--cpus-per-worker", "1", "--dim", "8"]


def train_recommenders(root: str, models: str, *extra: str) -> str:
    encoder_id = load_encoder(model="showcase-tiny").encoder_id  # the embeddings of trained_root (no trained CLIP)
    assert run("train_recommender", train_recommender.main, ["--root", root, "--encoder", encoder_id,
                                                             "--models", models, *TRAIN, *extra]) == 0
    return root


@pytest.fixture(scope="module")
def local_root(trained_root):
    """The nightly tests' trained ROOT (their dates are older than DATE), with recommenders."""
    # AlignRec, LightGCN and the reviewer in one model; 2 of the 8 businesses cold
    return train_recommenders(trained_root, "r2mr", "--cold-fraction", "0.3")


@pytest.fixture(scope="module")
def s3_root(s3_trained_root):
    return train_recommenders(s3_trained_root, "popularity")  # the S3 paths are the same for every model


@pytest.fixture(params=["local", "s3"])
def any_root(request):
    return request.getfixturevalue("local_root" if request.param == "local" else "s3_root")


def read_candidates(root: str) -> pl.DataFrame:
    """The candidates table as an outside reader sees it: deltalake + Polars, no project code."""
    uri = f"{root}/candidates"
    table = DeltaTable(uri, storage_options=storage_options(root))
    return pl.from_arrow(table.to_pyarrow_table(filters=[("dt", "=", DATE)]))


def test_recommend_writes_top_n_of_unseen_businesses_and_the_nightly_explains_them(any_root, capsys):
    store = Store.open(any_root)
    entry = registry.latest(store, "recommender")
    model = "r2mr" if "r2mr" in entry.variants else "popularity"
    assert 0.0 <= entry.metrics[model]["test_recall@20"] <= 1.0 and entry.metrics[model]["val_users"] > 0
    assert run("recommend", recommend.main, ["--root", any_root, "--date", DATE, "--top-n", "3",
                                             "--users-per-block", "5", "--model", model]) == 0
    candidates = read_candidates(any_root)
    reviews = pl.from_arrow(store.read_table("reviews", ["user_id", "business_id"])).unique()
    assert candidates.height > 0
    assert candidates.join(reviews, on=["user_id", "business_id"], how="inner").height == 0  # never a reviewed one
    per_user = candidates.group_by("user_id").agg(pl.len().alias("n"), pl.col("rank").sort().alias("ranks"))
    assert per_user["n"].max() <= 3
    assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in per_user["ranks"].to_list())
    assert set(candidates["model"].unique().to_list()) <= {model, "popularity"}
    assert candidates.filter(pl.col("cold_start_user"))["model"].unique().to_list() in ([], ["popularity"])
    # every user with something left to recommend gets candidates (8 businesses: some reviewed them nearly all)
    assert per_user.height >= 0.8 * reviews["user_id"].n_unique()
    capsys.readouterr()
    assert run("recommend", recommend.main, ["--root", any_root, "--date", DATE, "--model", model]) == 0  # no-op
    assert "already written" in capsys.readouterr().out
    assert read_candidates(any_root).height == candidates.height
    assert run("nightly", nightly.main, ["--root", any_root, "--candidates", "latest", "--date", DATE,
                                         "--generator", "none", "--force", "true"]) == 0
    showcases = pl.from_arrow(DeltaTable(f"{any_root}/showcases", storage_options=storage_options(any_root))
                              .to_pyarrow_table(filters=[("dt", "=", DATE)]))
    quarantined = pl.from_arrow(DeltaTable(f"{any_root}/showcases_quarantine",
                                           storage_options=storage_options(any_root))
                                .to_pyarrow_table(filters=[("dt", "=", DATE)]))
    assert showcases.height + quarantined.height == candidates.height
    assert showcases.select("user_id", "business_id").unique().height == showcases.height


def test_nightly_latest_without_candidates_for_the_date_exits_2_in_one_line(local_root, capsys):
    code = run("nightly", nightly.main, ["--root", local_root, "--candidates", "latest", "--date", "2001-01-01",
                                         "--generator", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no candidates" in err[0], err


def test_recommend_refuses_a_model_that_was_not_trained(local_root, capsys):
    code = run("recommend", recommend.main, ["--root", local_root, "--date", DATE, "--model", "bprmf"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "train_recommender --models bprmf" in err[-1], err


def test_cold_businesses_are_scored_from_their_owner_photos_alone(local_root):
    store = Store.open(local_root)
    entry = registry.latest(store, "recommender")
    items = pl.read_parquet(f"{entry.variant('r2mr')}/items.parquet")
    cold = items.filter(pl.col("cold"))
    assert cold.height == 2 and cold["popularity"].to_list() == [0, 0]  # no train interaction: no ID, no reviews
    assert cold["scorable"].all()  # their owner photos are their content

    from showcase_core.recommend.data import load_recommender_data

    data = load_recommender_data(store, entry.encoder_id, 0.3, 0)
    owners = store.read_table("owner_photos", ["business_id"]).column("business_id").to_pylist()
    for index in map(data.interactions.items.index, cold["business_id"].to_list()):
        assert owners.count(data.interactions.items[index]) == 3 and abs(data.image[index]).sum() > 0
        assert not data.text[index].any()  # no review of a cold business reaches its content
    places = {p["business_id"]: [p["latitude"], p["longitude"]] for p in store.read_table("businesses").to_pylist()}
    assert data.place.tolist() == [places[b] for b in data.interactions.items]  # the item graph's place term


def test_evaluate_recommend_reports_every_model_over_seeds_with_the_reviewer_auc(local_root, tiny_world):
    import json

    import pyarrow.fs as pafs

    from jobs import evaluate

    world, _ = tiny_world
    assert run("evaluate", evaluate.main, ["--root", local_root, "--stage", "recommend", "--recommender-seeds",
                                           "0,1", "--world", world]) == 0
    store = Store.open(local_root)
    latest = sorted(i.path for i in store.fs.get_file_info(pafs.FileSelector(store.path("reports/evaluate")))
                    if i.path.endswith(".json"))[-1]
    report = json.loads(store.fs.open_input_stream(latest).read())
    table = report["recommend"]
    assert table["seeds"] == [0, 1] and len(table["per_seed"]) == 2 and table["planted"] == {
        "noise_photos": 1, "filler_reviews": 1}
    r2mr = table["models"]["r2mr"]
    for split in ("val", "test", "test_long_tail", "test_cold", "test_planted"):
        cell = r2mr[split]["recall@20"]
        assert len(cell["values"]) == 2 and 0 <= cell["mean"] <= 1 and cell["sd"] >= 0
        assert abs(cell["mean"] - sum(cell["values"]) / 2) < 1e-12
    assert 0 <= r2mr["reviewer"]["auc_image"]["mean"] <= 1
    random, oracle = table["models"]["random"]["test"], table["models"]["oracle"]["test"]  # the reference rows
    assert 0 < random["recall@20"]["mean"] <= 1 and random["users"]["mean"] == r2mr["test"]["users"]["mean"]
    assert oracle["recall@20"]["mean"] >= random["recall@20"]["mean"]  # the world's own taste beats chance
    markdown = open(report["outputs"]["recommend"]["recommend.md"]).read()
    assert "| r2mr |" in markdown and "| oracle |" in markdown and "reviewer" in markdown and " ± " in markdown
    assert open(report["outputs"]["recommend"]["recommenders.png"], "rb").read(4) == b"\x89PNG"


def test_two_data_parallel_workers_train_the_reviewer_model(trained_root, tmp_path_factory):
    """Ray Train with 2 workers (DDP over gloo), each on its half of the train interactions: R2MR (LightGCN,
    AlignRec's content and the reviewer in one model) gives every parameter a gradient on every rank, or DDP stops at
    its second step; rank 0 keeps the best epoch and exports it."""
    root = copy_root(trained_root, tmp_path_factory, "recommender-ddp")
    train_recommenders(root, "r2mr", "--num-workers", "2", "--epochs", "3")
    entry = registry.latest(Store.open(root), "recommender")
    card_metrics = entry.metrics["r2mr"]
    assert 0.0 <= card_metrics["val_recall@20"] <= 1.0 and 0.0 <= card_metrics["test_recall@20"] <= 1.0
    items = pl.read_parquet(f"{entry.variant('r2mr')}/items.parquet")
    assert items.height == 8 and items["scorable"].all()
