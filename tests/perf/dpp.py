"""Greedy MAP throughput: the batched torch greedy vs a per-pair numpy greedy over the same kernels.

    .venv/bin/python tests/perf/dpp.py [--pairs 100000] [--photos 36] [--k 3] [--chunk 10000] [--threads 2]

Kernels look like the learned ones: L = diag(q) G G^T diag(q) + delta I with G the normalised 128-d diversity features of
``--photos`` photos and q log-normal relevances, float32. Both sides run Chen et al.'s incremental-Cholesky greedy: the
numpy one a pair at a time (how a per-request loop would), the torch one over ``--chunk`` pairs at once. Kernel
generation is not timed, nor a warm-up of each side on extra kernels. Prints selections/s of each, their ratio (goal
>= 20x), and how often the picks agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from showcase_core.selection import greedy_map  # noqa: E402


def kernels(rng: np.random.Generator, n: int, m: int, dim: int = 128, delta: float = 1e-2) -> np.ndarray:
    g = rng.standard_normal((n, m, dim)).astype(np.float32)
    g /= np.linalg.norm(g, axis=2, keepdims=True)
    q = np.exp(rng.normal(0, 0.7, (n, m))).astype(np.float32)
    L = q[:, :, None] * (g @ g.transpose(0, 2, 1)) * q[:, None, :]
    L += delta * np.eye(m, dtype=np.float32)
    return L


def numpy_greedy(L: np.ndarray, k: int, eps: float = 1e-10) -> list[int]:
    m = L.shape[0]
    c = np.zeros((k, m), L.dtype)
    d2 = np.diag(L).copy()
    picks: list[int] = []
    for step in range(k):
        scores = d2.copy()
        scores[picks] = -np.inf
        j = int(np.argmax(scores))
        if scores[j] <= eps:
            break
        picks.append(j)
        e = (L[j] - c[:step, j] @ c[:step]) / np.sqrt(d2[j])
        c[step] = e
        d2 = d2 - e * e
    return picks + [-1] * (k - len(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--photos", type=int, default=36)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # Warm both sides up first (torch's thread pool and allocator, numpy's BLAS): a one-time start is not throughput.
    warmup = kernels(rng, min(args.chunk, 1000), args.photos)
    greedy_map(torch.from_numpy(warmup), args.k)
    for kernel in warmup[:100]:
        numpy_greedy(kernel, args.k)
    batched_s = naive_s = 0.0
    agree = 0
    for start in range(0, args.pairs, args.chunk):
        n = min(args.chunk, args.pairs - start)
        L = kernels(rng, n, args.photos)
        t = time.perf_counter()
        picks = greedy_map(torch.from_numpy(L), args.k).numpy()
        batched_s += time.perf_counter() - t
        t = time.perf_counter()
        reference = [numpy_greedy(L[i], args.k) for i in range(n)]
        naive_s += time.perf_counter() - t
        agree += int((picks == np.array(reference)).all(axis=1).sum())
        print(f"  {start + n:,}/{args.pairs:,} pairs", file=sys.stderr, flush=True)
    batched, naive = args.pairs / batched_s, args.pairs / naive_s
    print(f"pairs: {args.pairs:,} ground sets of {args.photos} photos, k={args.k}, float32, {args.threads} threads")
    print(f"per-pair numpy greedy:  {naive:12,.0f} selections/s ({naive_s:.1f} s)")
    print(f"batched torch greedy:   {batched:12,.0f} selections/s ({batched_s:.1f} s, chunks of {args.chunk:,})")
    print(f"ratio batched / naive:  {batched / naive:.1f}x   (goal >= 20x)")
    print(f"same picks:             {agree / args.pairs:.4%} of pairs")


if __name__ == "__main__":
    main()
