"""Make torchvision importable on CPU-only torch (applied only when needed; idempotent).

The torchvision wheel that matches torch 2.13.0 is a CUDA build. On a CPU torch its compiled ops do not load, so
``import torchvision`` fails with "operator torchvision::nms does not exist" (and, while it is installed, so does
``import transformers``). Declaring the two op schemas that torchvision's Python side registers fake kernels for
is enough: nothing here calls them. On CUDA torch, or with a CPU build of torchvision, this does nothing.

Every process that may import torchvision, transformers or open_clip calls ``ensure_torchvision()`` first;
``showcase_core.encoders`` and ``showcase_core.generation`` do it on import, so Ray workers get it too.
"""

from __future__ import annotations

import importlib.metadata
import sys

_library = None  # keep the Library object alive: dropping it removes the definitions


def needs_patch() -> bool:
    import torch

    if "torchvision" in sys.modules or torch.version.cuda is not None:
        return False
    try:
        version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return False
    if "+cpu" in version:
        return False
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return False  # already defined (by torchvision itself or an earlier call)
    except RuntimeError:
        return True


def ensure_torchvision() -> None:
    global _library
    if not needs_patch():
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
