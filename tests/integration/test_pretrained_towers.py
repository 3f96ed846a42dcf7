"""The pretrained towers through the jobs on local Ray: train_clip --clip-model pretrained-towers, then embed and
features take them unchanged (same embeddings layout, their own encoder id), and so does train_dpp's loader. (Running
train_dpp itself, about 20 s more, would only repeat the same loader on Ray Train: it reads the embeddings by encoder
id, as it does a CLIP's.)"""

import numpy as np

from jobs import embed, features, ingest, train_clip
from jobs.common import run
from showcase_core import features as F
from showcase_core import registry
from showcase_core.encoders.embed import embeddings_schema, read_embeddings
from showcase_core.selection.data import load_selection_data
from showcase_core.store import Store
from tests.conftest import SMALL_BUCKETS


def unit_rows(table) -> np.ndarray:
    vectors = table.column("embedding").combine_chunks()
    return np.asarray(vectors.flatten(), np.float32).reshape(len(table), vectors.type.list_size)


def test_towers_train_embed_and_feed_the_features_and_the_dpp_loader(ray_local, tiny_world, tmp_path):
    world, summary = tiny_world
    root = str(tmp_path / "root")
    assert run("ingest", ingest.main, ["--root", root, "--gest", f"{world}/filter_all_t.json"]) == 0
    assert run("train_clip", train_clip.main, ["--root", root, "--clip-model", "pretrained-towers", "--epochs", "1",
                                               "--cpus-per-worker", "1"]) == 0
    store = Store.open(root)
    clip = registry.latest(store, "clip")
    encoder_id = clip.encoder_id
    assert encoder_id.startswith("pretrained-towers-") and 0 <= clip.metrics["heldout_recall_at_1_entity"] <= 1

    # embed's default (--encoder latest) loads the published head with the towers from their packages
    assert run("embed", embed.main, ["--root", root, "--batch-size", "64"]) == 0
    assert registry.encoder(store, encoder_id).extra["spec"] == {"checkpoint": clip.uri}
    images, texts = read_embeddings(store, encoder_id, "images"), read_embeddings(store, encoder_id, "texts")
    assert images.schema == texts.schema == embeddings_schema(128)  # the layout of every encoder's embeddings
    assert np.allclose(np.linalg.norm(unit_rows(images), axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(unit_rows(texts), axis=1), 1, atol=1e-5)
    photo_ids = [store.read_table(t).column("image_id").to_pylist() for t in ("images", "owner_photos")]
    assert sorted(images.column("id").to_pylist()) == sorted(photo_ids[0] + photo_ids[1])  # every photo
    assert len(images) == summary["photos"] + summary["owner_photos"]
    sentences = sum(i.startswith("sentence:") for i in texts.column("id").to_pylist())
    assert sentences == store.read_table("sentences").num_rows

    # the feature tables PC²L, the nightly and Serve read, and the DPP's training examples
    assert run("features", features.main, ["--root", root, *SMALL_BUCKETS]) == 0
    meta = F.read_meta(store, encoder_id)
    assert meta["dim"] == 128 and meta["tables"]["users"]["rows"] > 0 and meta["tables"]["businesses"]["rows"] > 0
    businesses = sorted(set(store.read_table("reviews", ["business_id"]).column("business_id").to_pylist()))
    ground = F.FeatureLookup(store, encoder_id).rows("businesses", businesses)
    assert all(F.ground_set(ground[b], 128).vectors.shape[1] == 128 for b in businesses)
    selection = load_selection_data(store, encoder_id, max_ground=32, splits=("train",))
    assert selection.photo_vecs.shape[1] == 128 and len(selection.photo_ids) > 0
    assert len(selection.splits["train"].user_ids) > 0
    assert selection.splits["train"].profile_img.shape[1] == selection.splits["train"].profile_text.shape[1] == 128
