"""GPU figures in one JSON line: ``python tests/perf/gpu.py [--dry-run] [--build-carry DIR]``.

Made for a lent GPU machine (about 1-2 minutes on one H100-class GPU; under 4 minutes is the budget) and for
``ray job submit`` on a GPU cluster (see the README). It uses the library only, with no Ray, deltalake, DeepSpeed,
pydantic or spaCy, so it runs on a machine that has just PyTorch, transformers, tokenizers, pyarrow and Pillow.
It measures, on one GPU:

- ``clip_model_only_photos_per_s``: open_clip ViT-B-32 (random weights: speed does not depend on them) under bf16
  autocast, as ``ClipEncoder`` runs it on CUDA. The input is batches of preprocessed 224 x 224 tensors already on the
  GPU.
- ``clip_end_to_end_photos_per_s``: 640 x 480 JPEG files on local disk. DataLoader worker processes decode them with the
  library's ``decode_and_resize`` (PIL's JPEG draft mode, or simplejpeg at the same scale where it is installed: the
  same pixels; shorter side to 224 with torch's antialiased bicubic, centre crop) into pinned uint8 batches, and ``ClipEncoder.encode_pixels`` turns
  each batch into L2-normalised float32 vectors on the host. This is what jobs.embed does per batch, without Ray.
- ``clip_gpu_decode_photos_per_s``: the same photos decoded on the GPU with ``torchvision.io.decode_jpeg``, then
  resized and cropped there. When torchvision's GPU decoder is missing, the value is null and
  ``clip_gpu_decode_error`` says why.
- ``pc2l_beam2_pairs_per_s``: PC²L with the GPT-2 small decoder config (12 layers, width 768, 12 heads, vocabulary
  50,257, cross-attention), 3 selected photos and 10 history reviews per pair. It runs the library's batched beam-2
  ``generate`` with the nightly's decoding defaults, in batches of 256 pairs, up to 64 new tokens. Random weights
  hardly ever emit the end token, so every row runs to the cap: the worst case. The tokenizer is a word-level
  stand-in with GPT-2's vocabulary size and its ``<|endoftext|>`` id (50256). The text means nothing here; the
  shapes are GPT-2's.
- ``pc2l_train_step_s``: one PC²L training step (CE + CCL with entity-swapped negatives + PCL, the library's
  ``pc2l_loss``) at the train job's batch of 32 and 64 target tokens, under bf16 autocast with fused AdamW. That is
  the compute of a ZeRO-2 step on one rank. DeepSpeed is not on the lent machine, so ZeRO's partitioning and
  communication are not part of this figure.
- the GPU's name, its memory, the peak memory allocated, and the versions.

``--dry-run`` runs the same code on the CPU with tiny counts (same architectures), in fp32. It proves that the
script works end to end; its speeds mean nothing. It runs in ``make test``
(tests/integration/test_gpu_script.py), from the carry folder.

Carry. The lent machine has no open_clip, nor open_clip's pure-Python dependencies ftfy and wcwidth (``CARRY``).
Build the folder here: ``python tests/perf/gpu.py --build-carry .gpu-carry``. It copies those installed packages,
about 5 MiB, into the folder. Then on the device run ``PYTHONPATH=.gpu-carry python3 tests/perf/gpu.py``. With the
``device`` tool, pass ``carry=[".gpu-carry"]`` (the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

CARRY = ("open_clip_torch", "ftfy", "wcwidth")  # the pure-Python distributions the lent machine lacks
GPT2_SMALL = {"d_model": 768, "heads": 12, "decoder_layers": 12, "vocab_size": 50257, "bos_token_id": 50256,
              "eos_token_id": 50256, "pad_token_id": 50256, "max_length": 64}
SIZES = {  # (GPU run, dry run)
    "model_batch": (512, 4), "model_batches": (20, 2),
    "jpegs": (512, 8), "e2e_batch": (256, 4), "e2e_photos": (20480, 16),
    "gpu_decode_batch": (256, 4), "gpu_decode_photos": (10240, 8),
    "pairs_batch": (256, 2), "pair_batches": (2, 1), "max_new_tokens": (64, 4),
    "train_batch": (32, 4), "train_tokens": (64, 4), "train_steps": (8, 1),
}


def build_carry(folder: str, names: tuple[str, ...] = CARRY) -> int:
    """Copy the installed files of the distributions ``names`` (packages and their .dist-info, not scripts) into
    ``folder``: what ``PYTHONPATH=folder`` needs on a machine without them. Prints and returns the bytes copied."""
    from importlib import metadata

    total = 0
    for name in names:
        dist = metadata.distribution(name)
        site = str(dist.locate_file(""))
        for rel in dist.files or []:
            path = str(rel)
            if path.startswith("..") or "__pycache__" in path or path.endswith(".pyc"):
                continue  # console scripts (outside site-packages) and bytecode
            source = os.path.join(site, path)
            if not os.path.isfile(source):
                continue
            target = os.path.join(folder, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
            total += os.path.getsize(source)
    print(f"carry folder {folder}: {', '.join(names)} ({total / 2**20:.1f} MiB)", file=sys.stderr)
    return total


def write_jpegs(folder: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct 640 x 480 JPEGs (quality 90) of smooth colour fields with grain, like a photo's byte size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        pixels = np.asarray(low, np.int16) + rng.normal(0, 6, (480, 640, 3)).astype(np.int16)
        path = os.path.join(folder, f"photo-{i:05d}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


class JpegFiles:
    """Map-style dataset: index -> uint8 [S, S, 3] of ``paths[index % len(paths)]`` through the library's decoder."""

    def __init__(self, paths: list[str], count: int, size: int):
        self.paths, self.count, self.size = paths, count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        import torch

        from showcase_core.encoders.photos import decode_and_resize

        with open(self.paths[index % len(self.paths)], "rb") as f:
            return torch.from_numpy(decode_and_resize(f.read(), self.size).copy())  # a writable array


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def clip_model_only(encoder, batch: int, batches: int, sync) -> float:
    import torch

    x = torch.randn(batch, 3, encoder.image_size, encoder.image_size, device=encoder.device)
    encoder.model.eval()

    def run():
        with torch.no_grad(), encoder.autocast():
            for _ in range(batches):
                encoder.model.encode_image(x)

    timed(run, sync)  # warm-up (kernels, autotuning)
    return batch * batches / timed(run, sync)


def clip_end_to_end(encoder, paths: list[str], photos: int, batch: int, workers: int, sync) -> dict:
    """Steady state: the clock starts after the first batch (worker start-up is excluded and reported apart)."""
    import torch

    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(JpegFiles(paths, photos, encoder.image_size), batch_size=batch,
                                         num_workers=workers, pin_memory=encoder.device.type == "cuda",
                                         prefetch_factor=4 if workers else None)
    done, first_s, steady_start, vectors = 0, 0.0, 0.0, None
    for i, pixels in enumerate(loader):
        vectors = encoder.encode_pixels(pixels)
        if i == 0:
            sync()
            first_s, steady_start = time.perf_counter() - start, time.perf_counter()
        else:
            done += len(pixels)
    sync()
    steady = time.perf_counter() - steady_start
    assert vectors is not None and abs(float((vectors ** 2).sum(1).mean()) - 1.0) < 1e-3  # unit vectors came out
    return {"photos_per_s": done / steady if done else None, "first_batch_s": first_s, "workers": workers}


def clip_gpu_decode(encoder, paths: list[str], photos: int, batch: int, sync) -> float:
    """torchvision's nvJPEG decode on the GPU, then shorter side to S (bicubic, antialiased), centre crop, normalise,
    the model: photos/s. Reading the bytes from the page cache is part of it."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from showcase_core.encoders.clip import CLIP_MEAN, CLIP_STD

    size, device = encoder.image_size, encoder.device
    mean = torch.as_tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def one(start: int):
        data = [read_file(paths[(start + j) % len(paths)]) for j in range(batch)]
        images = torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB, device=device)).float().div_(255.0)
        h, w = images.shape[-2:]
        scale = size / min(h, w)
        images = torch.nn.functional.interpolate(images, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                                 mode="bicubic", antialias=True, align_corners=False)
        top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
        x = (images[..., top:top + size, left:left + size] - mean) / std
        with torch.no_grad(), encoder.autocast():
            z = encoder.model.encode_image(x)
        return torch.nn.functional.normalize(z.float(), dim=-1).cpu()

    one(0)  # warm-up
    return photos / timed(lambda: [one(s) for s in range(0, photos, batch)], sync)


def stand_in_tokenizer(vocab_size: int, end_id: int):
    """A word-level tokenizer with GPT-2's vocabulary size, ``<|endoftext|>`` at ``end_id``, wrapped as the library
    wraps its own (BOS = EOS = padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from showcase_core.generation.tokenizer import END, wrap_tokenizer

    vocab = {f"w{i}": i for i in range(vocab_size)}
    vocab[END] = end_id
    del vocab[f"w{end_id}"]
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=END))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return wrap_tokenizer(tok)


def pc2l_model(clip_dim: int, device, max_length: int):
    import torch

    from showcase_core.generation.model import PC2L

    torch.manual_seed(0)
    return PC2L({**GPT2_SMALL, "clip_dim": clip_dim, "max_length": max_length}).to(device)


def unit_vectors(shape, device):
    import torch

    x = torch.randn(*shape, device=device)
    return torch.nn.functional.normalize(x, dim=-1)


def pc2l_generation(model, tokenizer, pairs: int, batches: int, autocast, sync) -> dict:
    import torch

    from showcase_core.generation.decode import generate

    device, dim = next(model.parameters()).device, model.config["clip_dim"]
    photos, history = unit_vectors((pairs, 3, dim), device), unit_vectors((pairs, 10, dim), device)
    photo_mask = torch.ones(pairs, 3, dtype=torch.bool, device=device)
    history_mask = torch.ones(pairs, 10, dtype=torch.bool, device=device)
    texts: list[str] = []

    def run(n):
        with autocast():
            for _ in range(n):
                texts[:] = generate(model, tokenizer, photos, photo_mask, history, history_mask, num_beams=2)

    timed(lambda: run(1), sync)  # warm-up
    seconds = timed(lambda: run(batches), sync)
    words = statistics.mean(len(t.split()) for t in texts)
    return {"pairs_per_s": pairs * batches / seconds, "batch": pairs, "mean_words": round(words, 1)}


def pc2l_train_step(model, batch: int, tokens: int, steps: int, autocast, sync) -> dict:
    import torch

    from showcase_core.generation.model import pc2l_loss

    device, dim, vocab = next(model.parameters()).device, model.config["clip_dim"], model.config["vocab_size"]
    max_photos, max_history = model.config["max_photos"], model.config["max_history"]
    ids = torch.randint(0, vocab - 1, (batch, tokens), device=device)
    swapped = torch.randint(0, vocab - 1, (batch, tokens), device=device)
    ones = torch.ones(batch, tokens, dtype=torch.long, device=device)
    data = {"photos": unit_vectors((batch, max_photos, dim), device),
            "photo_mask": torch.ones(batch, max_photos, dtype=torch.bool, device=device),
            "history": unit_vectors((batch, max_history, dim), device),
            "history_mask": torch.ones(batch, max_history, dtype=torch.bool, device=device),
            "input_ids": ids, "attention_mask": ones, "labels": ids.clone(), "swapped_ids": swapped,
            "swapped_mask": ones, "has_swap": torch.ones(batch, dtype=torch.bool, device=device)}
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **fused)
    model.train()
    losses: list[float] = []

    def step():
        with autocast():
            loss = pc2l_loss(model(data), data, 0.2, 0.2, 0.1, math.e, across_ranks=False)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    timed(step, sync)  # warm-up: allocates the optimizer state
    times = [timed(step, sync) for _ in range(steps)]
    assert all(math.isfinite(x) for x in losses), losses
    return {"step_s": statistics.median(times), "batch": batch, "tokens": tokens,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny counts on the CPU: proves the script, not a speed")
    parser.add_argument("--build-carry", metavar="DIR", help="copy the packages the lent machine lacks into DIR, exit")
    parser.add_argument("--workers", type=int, default=0, help="JPEG decode processes (0: the CPUs but two)")
    args = parser.parse_args(argv)
    if args.build_carry:
        build_carry(args.build_carry)
        return 0
    import contextlib

    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu.py: no CUDA device here; --dry-run runs the same code on the CPU", file=sys.stderr)
        return 2
    size = {k: v[0 if cuda else 1] for k, v in SIZES.items()}
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    from showcase_core.encoders.clip import load_encoder

    started = time.perf_counter()
    out: dict = {"dry_run": not cuda, "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
                 "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
                 "torch": torch.__version__, "python": platform.python_version(), "precision": "bf16" if cuda else "fp32"}
    import open_clip
    import transformers

    out.update(open_clip=open_clip.__version__, transformers=transformers.__version__)
    encoder = load_encoder(model="ViT-B-32", device=str(device))
    out["clip_model_only_photos_per_s"] = round(clip_model_only(encoder, size["model_batch"], size["model_batches"],
                                                                sync), 1)
    workers = args.workers or (max(1, (os.cpu_count() or 2) - 2) if cuda else 1)
    with tempfile.TemporaryDirectory(prefix="gpu-jpegs-") as folder:
        paths = write_jpegs(folder, size["jpegs"])
        out["jpeg_kib"] = round(statistics.mean(os.path.getsize(p) for p in paths) / 1024, 1)
        e2e = clip_end_to_end(encoder, paths, size["e2e_photos"], size["e2e_batch"], workers, sync)
        out["clip_end_to_end_photos_per_s"] = e2e["photos_per_s"] and round(e2e["photos_per_s"], 1)
        out.update(clip_end_to_end_workers=workers, clip_end_to_end_first_batch_s=round(e2e["first_batch_s"], 2))
        out["clip_gpu_decode_photos_per_s"], out["clip_gpu_decode_error"] = None, None
        if cuda:
            try:
                out["clip_gpu_decode_photos_per_s"] = round(clip_gpu_decode(encoder, paths, size["gpu_decode_photos"],
                                                                            size["gpu_decode_batch"], sync), 1)
            except Exception as e:  # torchvision without its GPU decoder: the figure is absent, with the reason
                out["clip_gpu_decode_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        else:
            out["clip_gpu_decode_error"] = "not run: needs CUDA"
    clip_dim = int(encoder.model.visual.output_dim)
    del encoder
    model = pc2l_model(clip_dim, device, size["max_new_tokens"])
    tokenizer = stand_in_tokenizer(GPT2_SMALL["vocab_size"], GPT2_SMALL["eos_token_id"])
    generation = pc2l_generation(model, tokenizer, size["pairs_batch"], size["pair_batches"], autocast, sync)
    out.update(pc2l_beam2_pairs_per_s=round(generation["pairs_per_s"], 1), pc2l_beam2_batch=generation["batch"],
               pc2l_max_new_tokens=size["max_new_tokens"], pc2l_mean_words=generation["mean_words"])
    train = pc2l_train_step(model, size["train_batch"], size["train_tokens"], size["train_steps"], autocast, sync)
    out.update(pc2l_train_step_s=round(train["step_s"], 4), pc2l_train_batch=train["batch"],
               pc2l_train_tokens=train["tokens"], pc2l_params_m=train["params_m"],
               pc2l_train_optimizer="fused AdamW, bf16 autocast; no DeepSpeed" if cuda else "AdamW, fp32")
    out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
