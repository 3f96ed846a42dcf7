import io
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from jobs import harness
from showcase_core.encoders.clip import EncoderError, load_encoder, save_encoder
from showcase_core.encoders.photos import decode_and_resize
from showcase_core.encoders.training import (DecodedPerBatch, clip_pairs, lr_at, retrieval_recall, scan_photos,
                                              train_epoch)


def jpeg(w, h, color=(200, 30, 30), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, fmt)
    return buf.getvalue()


def test_torchvision_and_transformers_import_in_a_fresh_process_after_the_compat():
    code = ("from showcase_core.torch_compat import ensure_torchvision, needs_patch; ensure_torchvision(); "
            "import torchvision, transformers, open_clip; assert not needs_patch(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_decode_and_resize_centre_crops_to_a_square_uint8_array():
    px = decode_and_resize(jpeg(120, 60), 32)
    assert px.shape == (32, 32, 3) and px.dtype == np.uint8
    assert abs(int(px[16, 16, 0]) - 200) < 10
    assert decode_and_resize(jpeg(10, 10, fmt="PNG"), 16).shape == (16, 16, 3)  # upscales small photos too


def test_an_open_clip_model_without_weights_gets_the_same_random_ones_every_time():
    """embed's actors each load the encoder: random weights that differed per process made each actor refuse its
    encoder (another encoder_id than the driver's). The caller's random state is left as it was."""
    import torch

    a = load_encoder(model="RN50", device="cpu")
    torch.rand(3)  # another random state
    state = torch.random.get_rng_state()
    b = load_encoder(model="RN50", device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.encoder_id == b.encoder_id and a.encoder_id.startswith("RN50-")


def test_tiny_encoder_is_deterministic_and_outputs_unit_vectors():
    a, b = load_encoder(model="showcase-tiny"), load_encoder(model="showcase-tiny")
    assert a.encoder_id == b.encoder_id and a.encoder_id.startswith("showcase-tiny-")
    px = np.stack([decode_and_resize(jpeg(64, 64, c), a.image_size) for c in [(255, 0, 0), (0, 0, 255)]])
    za, zt = a.encode_pixels(px), a.encode_texts(["the ramen", "the tacos", "x"])
    assert za.shape == (2, 128) and za.dtype == np.float32 and zt.shape == (3, 128)
    assert np.allclose(np.linalg.norm(za, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(zt, axis=1), 1, atol=1e-5)
    assert np.allclose(za, b.encode_pixels(px), atol=1e-6)


def test_save_and_load_round_trip_keeps_weights_and_id(tmp_path):
    enc = load_encoder(model="showcase-tiny")
    with torch.no_grad():
        enc.model.logit_scale.add_(1.0)  # different weights -> a different id
    enc.refresh_id()
    card = save_encoder(enc, str(tmp_path / "m"), {"name": "clip"})
    assert sorted(os.listdir(tmp_path / "m")) == ["card.json", "config.json", "model.pt"]
    back = load_encoder(checkpoint=str(tmp_path / "m"))
    assert back.encoder_id == enc.encoder_id == card["encoder_id"]
    assert back.encoder_id != load_encoder(model="showcase-tiny").encoder_id
    assert np.allclose(back.encode_texts(["pizza"]), enc.encode_texts(["pizza"]), atol=1e-6)


def test_bad_encoder_configs_raise_one_line_errors(tmp_path):
    with pytest.raises(EncoderError, match="unknown CLIP model 'ViT-Nope'"):
        load_encoder(model="ViT-Nope")
    with pytest.raises(EncoderError, match="no CLIP checkpoint at"):
        load_encoder(checkpoint=str(tmp_path / "missing"))
    with pytest.raises(EncoderError, match="no CLIP configured"):
        load_encoder()
    with pytest.raises(EncoderError, match="showcase-tiny has no pretrained weights"):  # never silently ignored
        load_encoder(model="showcase-tiny", pretrained=str(tmp_path / "weights.pt"))


def test_retrieval_recall_by_hand():
    # 3 photos, 3 sentences; photo p2 retrieves s0 (wrong sentence, same entity), the others their own
    img = np.eye(3, dtype=np.float32)[[0, 1, 0]]
    txt = np.eye(3, dtype=np.float32)
    pairs = pa.table({"image_id": ["p0", "p1", "p2"], "sentence_id": ["s0", "s1", "s2"],
                      "entities": [["ramen"], ["tacos"], ["ramen"]]})
    r = retrieval_recall(img, ["p0", "p1", "p2"], txt, ["s0", "s1", "s2"], pairs)
    assert r["recall_at_1_exact"] == pytest.approx(2 / 3)
    assert r["recall_at_1_entity"] == pytest.approx(1.0)
    assert r["random_exact"] == pytest.approx(1 / 3)
    assert r["random_entity"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)


def test_retrieval_recall_in_blocks_of_photos_is_the_whole_matrix_s():
    """Scored a few photos at a time, never a photos x sentences matrix: the figures the whole similarity and
    entity-sharing matrices give (computed here directly), with photos in several pairs and sentences without
    entities."""
    rng = np.random.default_rng(3)
    photos, sentences, dishes = 23, 31, ["ramen", "tacos", "pho", "mole", "dal"]
    img, txt = rng.normal(size=(photos, 8)).astype(np.float32), rng.normal(size=(sentences, 8)).astype(np.float32)
    said = [list(rng.choice(dishes, size=rng.integers(0, 3), replace=False)) for _ in range(sentences)]
    rows = [(f"p{i}", f"s{j}", said[j]) for i in range(photos) for j in rng.choice(sentences, 2, replace=False)]
    pairs = pa.table({"image_id": [r[0] for r in rows], "sentence_id": [r[1] for r in rows],
                      "entities": [r[2] for r in rows]})
    relevant = np.zeros((photos, sentences), bool)
    of_photo, of_sentence = [set() for _ in range(photos)], [set() for _ in range(sentences)]
    for p, s, e in rows:
        relevant[int(p[1:]), int(s[1:])] = True
        of_photo[int(p[1:])].update(e)
        of_sentence[int(s[1:])].update(e)
    same = np.array([[bool(a & b) for b in of_sentence] for a in of_photo])
    top = np.argmax(img @ txt.T, axis=1)
    want = {"photos": photos, "sentences": sentences, "recall_at_1_exact": relevant[np.arange(photos), top].mean(),
            "random_exact": relevant.mean(), "recall_at_1_entity": same[np.arange(photos), top].mean(),
            "random_entity": same.mean()}
    ids = ([f"p{i}" for i in range(photos)], [f"s{j}" for j in range(sentences)])
    for block in (1, 5, 1024):
        got = retrieval_recall(img, ids[0], txt, ids[1], pairs, block=block)
        assert got == pytest.approx(want), block
    assert 0 < want["random_entity"] < 1 and 0 < want["recall_at_1_exact"] < 1


def test_clip_pairs_explodes_sentences_into_photo_pairs_of_the_requested_splits():
    sentences = pa.table({"sentence_id": ["r1#0", "r1#1", "r2#0"], "text": ["a", "filler", "b"],
                          "pic_ids": [["p1", "p2"], [], ["p3"]], "entities": [["x"], [], ["y"]],
                          "split": ["train", "train", "test"]})
    images = pa.table({"image_id": ["p1", "p2", "p3", "p1"], "uri": ["/i/p1", "/i/p2", "/i/p3", "/other/p1"]})
    train = clip_pairs(sentences, images, ("train",))
    assert train.select(["image_id", "sentence_id", "text", "uri"]).to_pylist() == [
        {"image_id": "p1", "sentence_id": "r1#0", "text": "a", "uri": "/i/p1"},
        {"image_id": "p2", "sentence_id": "r1#0", "text": "a", "uri": "/i/p2"}]
    assert clip_pairs(sentences, images, ("test",)).column("image_id").to_pylist() == ["p3"]


def test_a_few_contrastive_steps_lower_the_loss():
    torch.manual_seed(0)
    enc = load_encoder(model="showcase-tiny")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)] * 4
    pixels = np.stack([decode_and_resize(jpeg(64, 64, c), enc.image_size) for c in colours])
    tokens = enc.tokenizer([f"colour {c}" for c in colours])
    opt = torch.optim.AdamW(enc.model.parameters(), lr=1e-3)
    step = harness.optimizer_step(harness.Trained(enc.model, opt))
    losses = []
    global_step = 0
    for epoch in range(12):
        loss, global_step = train_epoch(enc.model, step, pixels, tokens, 16, epoch, 0, global_step, 12, 1e-3, 1,
                                        torch.device("cpu"))
        losses.append(loss)
    assert global_step == 12 and opt.param_groups[0]["lr"] == lr_at(11, 12, 1e-3, 1)  # step sets the schedule's lr
    assert losses[-1] < losses[0] * 0.8, losses


def test_photos_decoded_again_batch_by_batch_train_exactly_as_photos_held_per_pair(tmp_path):
    """train_clip reads a CLIP's photos again for every batch (DecodedPerBatch: memory one batch) instead of holding a
    row of pixels per pair; training is the same to the bit. scan_photos reads them a chunk at a time first and names
    the unreadable ones."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    uris = []
    for i, colour in enumerate(colours):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(64, 64, colour))
        uris.append(str(tmp_path / f"{i}.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"no photo")
    size = load_encoder(model="showcase-tiny").image_size
    ok, errors, kept = scan_photos([uris[0], str(tmp_path / "broken.jpg"), *uris[1:]], size, keep=lambda px: px,
                                   chunk=3)
    assert ok == [0, 2, 3, 4] and len(errors) == 1 and errors[0].startswith(str(tmp_path / "broken.jpg"))
    assert [len(k) for k in kept] == [2, 2]  # chunks of 3 photos, one of them unreadable
    rows = np.array([0, 1, 2, 3] * 4)  # 16 pairs, each photo in four

    def train(pixels):
        torch.manual_seed(0)
        enc = load_encoder(model="showcase-tiny")
        tokens = enc.training_texts([f"colour {colours[r]}" for r in rows])
        opt = torch.optim.AdamW(enc.model.parameters(), lr=1e-3)
        step = harness.optimizer_step(harness.Trained(enc.model, opt))
        losses = [train_epoch(enc.model, step, pixels, tokens, 8, epoch, 0, 2 * epoch, 6, 1e-3, 1,
                              torch.device("cpu"))[0] for epoch in range(3)]
        return losses, enc.model.state_dict()

    held_losses, held_weights = train(np.concatenate(kept)[rows])
    decoded_losses, decoded_weights = train(DecodedPerBatch(uris, rows, size))
    assert held_losses == decoded_losses
    assert all(torch.equal(held_weights[k], decoded_weights[k]) for k in held_weights)
    (tmp_path / "3.jpg").unlink()
    with pytest.raises(RuntimeError, match="can no longer be read"):
        DecodedPerBatch(uris, rows, size)[np.arange(16)]


def test_a_checkpoint_path_that_is_a_file_is_one_line(tmp_path):
    import time

    world = tmp_path / "world.json"
    world.write_text("{}")
    started = time.monotonic()
    with pytest.raises(EncoderError, match=f"^no CLIP checkpoint at {world} \\(expected a folder with config.json "
                                           "and model.pt\\)$"):
        load_encoder(checkpoint=str(world))
    with pytest.raises(EncoderError, match="^no CLIP checkpoint at"):  # a path through a file
        load_encoder(checkpoint=str(world / "v1"))
    assert time.monotonic() - started < 10  # at once: no read is tried again (30 s of waits each) for what is not there
