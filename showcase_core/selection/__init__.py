"""Personalized image-set selection: the learned DPP kernel and batched greedy MAP inference."""

from .greedy import greedy_map

__all__ = ["greedy_map"]
