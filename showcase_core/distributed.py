"""torch.distributed helpers for the training epochs; each is the identity when the process group is not initialised
or has one rank, so single-process training is unchanged.

- ``common_length``: every rank trains on as many examples as the rank with the fewest, so all ranks run the same
  batches with the same sizes (DDP's gradient all-reduce and the gathered losses pair the ranks' collectives);
- ``gather_rows``: every rank's rows in rank order, gradients flowing back to the rank that owns them. For a loss
  over the gathered batch, the same on every rank, the gather's backward sums the ranks' (equal) gradients of each
  rank's own rows: world × the global loss's. The data-parallel average (DDP, DeepSpeed) divides by world, so the
  parameters get the global batch's gradient; those used after the gather (CLIP's logit scale) get it on every rank.

Whoever launches the workers (Ray Train, torchrun) initialises the process group; nothing here imports Ray.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def common_length(n: int, device="cpu") -> int:
    """The fewest examples any rank has (n itself without a group)."""
    if rank_and_world()[1] == 1:
        return n
    fewest = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    return int(fewest.item())


def gather_rows(x: torch.Tensor | None) -> torch.Tensor | None:
    """Every rank's x ([B, ...], the same shape on every rank) concatenated along dim 0, with gradients."""
    if x is None or rank_and_world()[1] == 1:
        return x
    if x.dtype == torch.bool:  # not every backend reduces bool tensors
        return gather_rows(x.to(torch.uint8)).bool()
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x), dim=0)
