"""The pretrained towers encoder: frozen EfficientNet-Lite0 + all-MiniLM-L6-v2 with trained projections (no Ray)."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import harness
from showcase_core.encoders import towers
from showcase_core.encoders.clip import EncoderError, load_encoder, save_encoder
from showcase_core.encoders.photos import decode_and_resize
from showcase_core.encoders.training import train_epoch

COLOURS = [(230, 40, 40), (40, 200, 60), (40, 60, 220), (240, 220, 40)]
TEXTS = ["a red plate of spicy noodles", "a green salad with herbs", "blue cocktails at the bar",
         "yellow lemon tart for dessert"]


def photos(encoder, colours=COLOURS) -> np.ndarray:
    out = []
    for colour in colours:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), colour).save(buf, "JPEG")
        out.append(decode_and_resize(buf.getvalue(), encoder.image_size))
    return np.stack(out)


def state_of(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_are_unit_vectors_of_the_shared_space_under_a_stable_id(monkeypatch):
    a, b = load_encoder(model="pretrained-towers"), load_encoder(model="pretrained-towers")
    assert a.encoder_id == b.encoder_id and a.encoder_id.startswith("pretrained-towers-")
    assert a.image_size == 224
    px = photos(a)
    zi, zt = a.encode_pixels(px), a.encode_texts(TEXTS[:3])
    assert zi.shape == (4, 128) and zi.dtype == np.float32 and zt.shape == (3, 128) and zt.dtype == np.float32
    assert np.allclose(np.linalg.norm(zi, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(zt, axis=1), 1, atol=1e-5)
    assert np.array_equal(zi, b.encode_pixels(px)) and np.array_equal(zt, b.encode_texts(TEXTS[:3]))
    monkeypatch.setattr(towers, "IMAGE_CHUNK", 3)  # a batch through the image tower in chunks: the same vectors
    assert np.allclose(a.encode_pixels(px), zi, atol=1e-6)
    assert a.encode_texts([]).shape == (0, 128)


def test_a_training_step_moves_the_projections_and_leaves_the_towers_frozen():
    torch.manual_seed(0)
    enc = load_encoder(model="pretrained-towers", device="cpu")
    image_before, text_before, head_before = state_of(enc.image), state_of(enc.text), state_of(enc.head)
    before_id = enc.encoder_id
    image_inputs, text_inputs = enc.training_photos(photos(enc, COLOURS * 2)), enc.training_texts(TEXTS * 2)
    assert enc.keeps_training_photos and image_inputs.shape == (8, 1280) and text_inputs.shape == (8, 384)
    assert torch.equal(text_inputs[0], text_inputs[4])  # each distinct text encoded once
    opt = torch.optim.AdamW(enc.trainable_module.parameters(), lr=1e-2)
    step = harness.optimizer_step(harness.Trained(enc.trainable_module, opt))
    losses, global_step = [], 0
    for epoch in range(6):
        loss, global_step = train_epoch(enc.trainable_module, step, image_inputs, text_inputs, 8, epoch, 0,
                                        global_step, 6, 1e-2, 1, torch.device("cpu"), image_batch=enc.image_batch)
        losses.append(loss)
    assert losses[-1] < losses[0], losses
    assert same_state(state_of(enc.image), image_before) and same_state(state_of(enc.text), text_before)
    assert not any(p.requires_grad for m in (enc.image, enc.text) for p in m.parameters())
    after = state_of(enc.head)
    assert not torch.equal(after["image_projection.weight"], head_before["image_projection.weight"])
    assert not torch.equal(after["text_projection.weight"], head_before["text_projection.weight"])
    enc.refresh_id()
    assert enc.encoder_id != before_id and enc.encoder_id.startswith("pretrained-towers-")


def test_save_and_load_round_trip_gives_identical_embeddings_and_id(tmp_path):
    enc = load_encoder(model="pretrained-towers", device="cpu")
    with torch.no_grad():
        enc.head.image_projection.weight.mul_(-1.5)  # trained weights: a different id than the fresh head's
    enc.refresh_id()
    card = save_encoder(enc, str(tmp_path / "m"), {"name": "clip"})
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(saved) == {"image_projection.weight", "text_projection.weight", "logit_scale"}  # the head only
    back = load_encoder(checkpoint=str(tmp_path / "m"), device="cpu")
    assert back.encoder_id == enc.encoder_id == card["encoder_id"]
    assert back.encoder_id != load_encoder(model="pretrained-towers").encoder_id
    px = photos(enc)
    assert np.array_equal(back.encode_pixels(px), enc.encode_pixels(px))
    assert np.array_equal(back.encode_texts(TEXTS), enc.encode_texts(TEXTS))


def test_other_towers_and_a_pretrained_tag_are_refused(tmp_path):
    enc = load_encoder(model="pretrained-towers", device="cpu")
    save_encoder(enc, str(tmp_path / "m"), {"name": "clip"})
    path = os.path.join(tmp_path, "m", "config.json")
    with open(path) as f:
        config = json.load(f)
    config["model_cfg"]["towers_fingerprint"] = "0" * 12  # a head trained on other tower weights
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(EncoderError, match="not those this head was trained on"):
        load_encoder(checkpoint=str(tmp_path / "m"))
    with pytest.raises(EncoderError, match="takes no pretrained tag"):
        load_encoder(model="pretrained-towers", pretrained="laion2b_s34b_b79k")
