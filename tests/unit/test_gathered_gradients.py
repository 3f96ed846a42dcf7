"""Contrastive losses across ranks: two gloo ranks (torch.multiprocessing, no Ray), each with half of a global batch
under DDP. With the gathered losses (CLIP's ``clip_loss``, PC²L's ``pc2l_loss``) DDP's averaged gradient is one
process's gradient on the whole batch; with per-rank in-batch negatives it is not."""

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from showcase_core.distributed import common_length, gather_rows
from showcase_core.encoders.training import clip_loss
from showcase_core.generation.model import pc2l_loss

WORLD, BATCH, DIM = 2, 8, 6  # BATCH: the global batch, split in equal halves


class TinyClip(nn.Module):
    """CLIP's outputs: unit image and text features and the logit scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = nn.Linear(DIM, 4), nn.Linear(DIM, 4)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, b):
        return F.normalize(self.image(b["x"]), dim=-1), F.normalize(self.text(b["y"]), dim=-1), self.logit_scale.exp()


class TinyPC2L(nn.Module):
    """PC²L's outputs: a per-row CE stand-in and the pooled photo, history, target and swapped-target features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.phi_v, self.phi_r, self.phi_y = nn.Linear(DIM, 4), nn.Linear(DIM, 4), nn.Linear(DIM, 4)

    def forward(self, b):
        target = self.phi_y(b["y"])
        return {"ce": target.pow(2).sum(-1).mean(), "photo": self.phi_v(b["x"]),
                "history": self.phi_r(b["history"].mean(1)), "target": target, "swapped": self.phi_y(b["y_ent"])}


def global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    history_mask = torch.rand(BATCH, 3, generator=g) > 0.3
    history_mask[[1, 6]] = False  # rows without history take no part in PCL
    return {"x": torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
            "y": torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
            "y_ent": torch.randn(BATCH, DIM, generator=g, dtype=torch.float64),
            "history": torch.randn(BATCH, 3, DIM, generator=g, dtype=torch.float64), "history_mask": history_mask,
            "has_swap": torch.tensor([True, False, True, True, False, True, True, True])}


def gradients(kind: str, gathered: bool, batch: dict, ddp: bool) -> dict:
    model = (TinyClip if kind == "clip" else TinyPC2L)().double()
    wrapped = DistributedDataParallel(model) if ddp else model
    if kind == "clip":
        loss = clip_loss(across_ranks=gathered)(*wrapped(batch))
    else:
        loss = pc2l_loss(wrapped(batch), batch, 0.2, 0.3, 0.1, math.e, across_ranks=gathered)["loss"]
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        half = BATCH // WORLD
        batch = {k: v[rank * half:(rank + 1) * half] for k, v in global_batch().items()}
        result = {(kind, gathered): gradients(kind, gathered, batch, ddp=True)
                  for kind in ("clip", "pc2l") for gathered in (True, False)}
        result["common_length"] = common_length(5 - rank)
        result["has_swap"] = gather_rows(batch["has_swap"])
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_averaged_rank_gradients_of_the_gathered_losses_equal_the_global_batch_gradients(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["common_length"] for r in ranks] == [4, 4]
    assert all(torch.equal(r["has_swap"], global_batch()["has_swap"]) for r in ranks)
    for kind in ("clip", "pc2l"):
        single = gradients(kind, True, global_batch(), ddp=False)  # no process group: the plain in-batch loss
        for gathered in (True, False):
            # DDP has already averaged: every rank holds the same gradients
            assert all(torch.equal(ranks[0][kind, gathered][n], ranks[1][kind, gathered][n]) for n in single)
            worst = max(float((ranks[0][kind, gathered][n] - g).abs().max()) for n, g in single.items())
            if gathered:
                assert worst < 1e-6, (kind, worst)
            else:  # each rank contrasting only its own half is a different loss
                assert worst > 1e-3, (kind, worst)
