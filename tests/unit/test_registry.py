"""The model registry: one schema for every model and encoder, one-line errors for what is not published."""

import json

import pytest

from showcase_core import registry
from showcase_core.registry import RegistryError
from showcase_core.store import Store


def model_dir(store: Store, *parts: str) -> str:
    uri = store.uri("models", *parts)
    store.write_json("/".join(["models", *parts, "card.json"]), {"name": parts[0]})
    return uri


def test_publish_then_resolve_the_latest(tmp_path):
    store = Store.open(str(tmp_path))
    first = {m: model_dir(store, "dpp", "v1", m) for m in ("img", "text")}
    registry.publish(store, "dpp", "v1", store.uri("models", "dpp", "v1"), "enc-a", variants=first,
                     metrics={"img": {"val_f1": 0.5}})
    second = {"img": model_dir(store, "dpp", "v2", "img")}
    registry.publish(store, "dpp", "v2", store.uri("models", "dpp", "v2"), "enc-b", variants=second,
                     data_fingerprint={"sha256": "x"})
    latest = registry.latest(store, "dpp")
    assert (latest.name, latest.version, latest.encoder_id, latest.variants) == ("dpp", "v2", "enc-b", second)
    assert latest.data_fingerprint == {"sha256": "x"} and latest.metrics == {} and latest.created_at
    assert latest.variant("img") == second["img"]
    with pytest.raises(RegistryError, match=r"the latest dpp has no 'text' variant \(has img\)"):
        latest.variant("text")
    registry.check_files(*second.values())
    # the file on disk carries the one schema, whoever wrote it
    on_disk = json.loads(open(tmp_path / "models" / "dpp" / "_LATEST.json").read())
    assert set(on_disk) == {"name", "version", "uri", "encoder_id", "variants", "data_fingerprint", "metrics",
                            "created_at", "extra"}


def test_what_is_missing_is_one_line_naming_the_job(tmp_path):
    store = Store.open(str(tmp_path))
    with pytest.raises(RegistryError, match=r"no trained pc2l model under .* \(run `showcase train_pc2l`\)"):
        registry.latest(store, "pc2l")
    with pytest.raises(RegistryError, match=r"no trained CLIP .*pass --encoder ENCODER_ID"):
        registry.resolve_encoder_id(store, "latest")
    with pytest.raises(RegistryError, match=r"no embeddings of encoder e1 .*\(run `showcase embed`\)"):
        registry.encoder(store, "e1")
    with pytest.raises(RegistryError, match="model files missing at"):
        registry.check_files(store.uri("models", "gone"))
    store.write_json("models/clip/_LATEST.json", {"uri": "/old/schema"})
    with pytest.raises(RegistryError, match="is not a registry entry"):
        registry.latest(store, "clip")
    assert not registry.is_published(store, "dpp")


def test_encoders_and_the_latest_clip(tmp_path):
    store = Store.open(str(tmp_path))
    assert registry.resolve_encoder_id(store, "enc-given") == "enc-given"
    registry.publish(store, "clip", "v1", model_dir(store, "clip", "v1"), "enc-clip")
    assert registry.resolve_encoder_id(store, "latest") == "enc-clip"
    registry.publish_encoder(store, "enc-clip", {"checkpoint": "/m/clip/v1"}, image_size=64)
    entry = registry.encoder(store, "enc-clip")
    assert entry.extra == {"spec": {"checkpoint": "/m/clip/v1"}, "image_size": 64} and entry.uri == "/m/clip/v1"
