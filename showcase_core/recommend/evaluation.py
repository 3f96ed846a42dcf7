"""The recommenders' evaluation (``jobs.evaluate --stage recommend``): every model retrained per seed, MMRec's full
ranking on val and test, the long-tail and cold-item splits, and R2MR's reviewer against planted truth.

- ``fit``: one model on one seed's data, in this process (plain Adam, the train job's settings): the epoch with the
  best val Recall@20 among the checked ones is kept, as ``jobs.train_recommender`` keeps it.
- ``model_metrics``: one ranking of every user (train items masked, only scorable items) scored against several
  held-out sets: val, test, and test restricted to the long tail (warm items outside the most popular
  ``HEAD_SHARE`` by train interactions), to the cold items, and to the businesses with a planted poor modality.
- ``reviewer_auc``: how well R2MR's quality scores flag the planted modalities: ROC AUC of ``1 - s^m`` against the
  "modality m is poor" flag, over the items the reviewer sees users of (warm items). s^m is the reviewer's score of
  the content as given, before any rewrite: a kept rewrite is scored higher by construction, so the kept scores
  would measure the rewriter (large world, seed 0: AUC 0.91 photos, 0.86 reviews as given; 0.69, 0.72 kept).
- Two reference rows, per seed on the same split: ``random``, the exact expectation of a uniformly random ranking
  of the businesses a user has not reviewed in train; and, given the synthetic world, ``oracle``: the ranking by the
  world's own chance that the user reviews the business (true taste · menu, area and popularity: how the world draws
  reviewers), the ceiling of what a model could learn.
- ``summarize``: mean and sample sd over seeds of every number.

Memory: one seed's interactions and content (O(interactions + items × dim)) and one model at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.recommend import ranking_metrics
from .data import RecommenderData, build_model
from .interactions import TEST, TRAIN, VAL
from .training import rank, top_scores, train_epoch, train_sets

HEAD_SHARE = 0.2  # the most popular items by train interactions; the rest of the warm items are the long tail
KS = (10, 20)


def fit(name: str, data: RecommenderData, settings: dict, epochs: int, batch_size: int, lr: float,
        eval_every: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """(the model at its kept epoch, {"epoch": kept epoch, "val_recall@20": its value})."""
    x = data.interactions
    torch.manual_seed(seed)
    model = build_model(name, data, settings)
    if not getattr(model, "trainable", True):
        return model, {"epoch": 0}
    scorable = data.scorable(name)
    tu, ti = data.train
    codes, warm = train_sets(tu, ti, len(x.items)), ~x.cold
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    best = {"epoch": -1, "val_recall@20": -1.0, "state": None}
    for epoch in range(epochs):
        train_epoch(model, step, tu, ti, codes, warm, batch_size, epoch, seed)
        if epoch == epochs - 1 or (epoch + 1) % eval_every == 0:
            top = rank(model, x, scorable, max(KS))
            recall = ranking_metrics(top, x.by_user(VAL), KS)["recall@20"]
            if recall > best["val_recall@20"]:
                best = {"epoch": epoch, "val_recall@20": recall,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    model.load_state_dict(best.pop("state"))
    return model, best


def long_tail(data: RecommenderData) -> np.ndarray:
    """[I] bool: warm items outside the HEAD_SHARE most popular (by train interactions)."""
    x = data.interactions
    popularity = np.bincount(data.train[1], minlength=len(x.items))
    warm = np.flatnonzero(~x.cold)
    head = warm[np.argsort(-popularity[warm], kind="stable")[:int(round(HEAD_SHARE * len(warm)))]]
    tail = ~x.cold
    tail[head] = False
    return tail


def model_metrics(model, name: str, data: RecommenderData, planted: np.ndarray | None) -> dict:
    """{"val": {...}, "test": {...}, "test_long_tail": {...}, "test_cold": {...}[, "test_planted": {...}]}: one ranking
    (``rank``) scored against each held-out set."""
    top = rank(model, data.interactions, data.scorable(name), max(KS))
    return {key: ranking_metrics(top, held, KS) for key, held in held_out_sets(data, planted).items()}


def held_out_sets(data: RecommenderData, planted: np.ndarray | None) -> dict[str, list[np.ndarray]]:
    """Per user the held-out items of val, test and test's subsets (long tail, cold, planted)."""
    x = data.interactions
    test = x.by_user(TEST)
    out = {"val": x.by_user(VAL), "test": test}
    subsets = {"test_long_tail": long_tail(data), "test_cold": x.cold}
    if planted is not None:
        subsets["test_planted"] = planted
    out.update({key: [h[mask[h]] for h in test] for key, mask in subsets.items()})
    return out


def expected_random(train: list[np.ndarray], held: list[np.ndarray], items: int, ks=KS) -> dict:
    """The exact expectation of ranking_metrics for a uniformly random order of the items a user has no train
    interaction with: a held-out item is at each rank with probability 1 / |candidates|."""
    keep = [u for u, h in enumerate(held) if len(h)]
    out = {"users": len(keep)}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        recall, precision, ndcg = [], [], []
        for u in keep:
            candidates = items - len(train[u])
            hit = len(held[u]) / candidates  # P(the item at a given rank is held out)
            recall.append(min(k, candidates) / candidates)
            precision.append(hit * min(k, candidates) / k)
            ndcg.append(hit * discounts[:min(k, candidates)].sum() / discounts[:min(k, len(held[u]))].sum())
        for name, values in (("recall", recall), ("ndcg", ndcg), ("precision", precision)):
            out[f"{name}@{k}"] = float(np.mean(values)) if values else 0.0
    return out


def oracle_ranking(data: RecommenderData, world: dict, n: int, block: int = 4096) -> np.ndarray:
    """[users, n] item indices (train items masked): each user's businesses by the world's own chance that the user
    reviews them, which is how the world draws reviewers: a business's popularity × the user's reviewer weight
    (``world.reviewer_weights``: taste · menu and area) / the business's total weight over all the world's users.
    Worlds made before areas and popularity have one area and popularity 1. Memory: O(block × items)."""
    from ..data.world import reviewer_weights

    x = data.interactions
    entity = {e["name"]: i for i, e in enumerate(world["entities"])}
    row_of = {u["user_id"]: row for row, u in enumerate(world["users"])}
    taste = np.zeros((len(world["users"]), len(entity)))
    for row, user in enumerate(world["users"]):
        for name, weight in user["taste"].items():
            taste[row, entity[name]] = weight
    user_area = np.array([u.get("area", 0) for u in world["users"]])
    business = {b["business_id"]: b for b in world["businesses"]}
    menus = np.zeros((len(x.items), len(entity)))
    for row, business_id in enumerate(x.items):
        menus[row, [entity[name] for name in business[business_id]["menu"]]] = 1.0
    business_area = np.array([business[b].get("area", 0) for b in x.items])
    popularity = np.array([business[b].get("popularity", 1.0) for b in x.items])
    total = sum(reviewer_weights(taste[at:at + block], menus, user_area[at:at + block], business_area).sum(0)
                for at in range(0, len(taste), block))
    scale = popularity / total
    rows = np.array([row_of[u] for u in x.users])
    train = x.by_user(TRAIN)
    tops = []
    for at in range(0, len(rows), block):
        chosen = rows[at:at + block]
        scores = reviewer_weights(taste[chosen], menus, user_area[chosen], business_area) * scale
        tops.append(top_scores(torch.as_tensor(scores), n, train[at:at + block])[1].numpy())
    return np.concatenate(tops)


def reference_metrics(data: RecommenderData, planted: np.ndarray | None, world: dict | None) -> dict:
    """{"random": ..., "oracle": ...} (oracle only with the world), with the models' keys."""
    x = data.interactions
    held, train = held_out_sets(data, planted), x.by_user(TRAIN)
    out = {"random": {key: expected_random(train, h, len(x.items)) for key, h in held.items()}}
    if world is not None:
        top = oracle_ranking(data, world, max(KS))
        out["oracle"] = {key: ranking_metrics(top, h, KS) for key, h in held.items()}
    return out


def reviewer_auc(model, data: RecommenderData, noise_photos: np.ndarray, filler_reviews: np.ndarray) -> dict:
    """ROC AUC of the reviewer's 1 - s^image against noise photos and of 1 - s^text against filler reviews (warm
    items; the scores of the content as given), the share of each planted set and of the others the reviewer puts
    below η, and the share of each planted set whose modality was rewritten."""
    from sklearn.metrics import roc_auc_score

    review = model.review_items()
    warm = ~data.interactions.cold
    eta = model.cfg["eta"]
    out = {}
    for modality, flags in (("image", noise_photos), ("text", filler_reviews)):
        score = review[f"score_{modality}"].cpu().numpy()
        labels = flags[warm]
        if 0 < labels.sum() < len(labels):
            out[f"auc_{modality}"] = float(roc_auc_score(labels, 1 - score[warm]))
        out[f"poor_below_eta_{modality}"] = float(np.mean(score[flags & warm] <= eta)) if (flags & warm).any() else None
        out[f"others_below_eta_{modality}"] = float(np.mean(score[~flags & warm] <= eta))
        rewritten = np.zeros(len(flags), bool)
        rewritten[review["rewritten"].get(modality, torch.zeros(0, dtype=torch.long)).cpu().numpy()] = True
        out[f"poor_rewritten_{modality}"] = float(np.mean(rewritten[flags & warm])) if (flags & warm).any() else None
    return out


def planted_flags(data: RecommenderData, world: dict | None) -> dict[str, np.ndarray] | None:
    """The world's planted low-quality businesses as [I] bool flags over the interactions' items (None: no world)."""
    if world is None:
        return None
    items = data.interactions.items
    return {kind: np.isin(items, world["low_quality"].get(kind, [])) for kind in ("noise_photos", "filler_reviews")}


def evaluate_seed(data: RecommenderData, models: list[str], training: dict, seed: int,
                  world: dict | None, progress=None) -> dict:
    """Every model fitted on one seed's data and measured, and the reference rows: {model: metrics}. ``world``: the
    synthetic world's world.json (entities, users, businesses, low_quality) or None."""
    flags = planted_flags(data, world)
    planted = (flags["noise_photos"] | flags["filler_reviews"]) if flags else None
    out = reference_metrics(data, planted, world)
    for name in models:
        model, kept = fit(name, data, training["settings"], training["epochs"], training["batch_size"],
                          training["lr"], training["eval_every"], seed)
        out[name] = {**model_metrics(model, name, data, planted), "kept_epoch": kept["epoch"]}
        if flags is not None and hasattr(model, "review_items"):
            out[name]["reviewer"] = reviewer_auc(model, data, flags["noise_photos"], flags["filler_reviews"])
        if progress:
            progress(name, seed, out[name])
    return out


def summarize(per_seed: list[dict]) -> dict:
    """Nested dicts of numbers (one per seed, the same keys) -> the same nesting of {"mean", "sd", "values"}."""
    first = per_seed[0]
    if isinstance(first, dict):
        return {k: summarize([s[k] for s in per_seed]) for k in first if all(k in s for s in per_seed)}
    values = [float(v) for v in per_seed if v is not None]
    if not values:
        return {"mean": None, "sd": None, "values": []}
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd, "values": values}


def order_met(summary: dict, order: list[str], key: str = "recall@20", split: str = "test") -> list[dict]:
    """For each neighbour pair a > b of ``order``: is mean(a) - mean(b) more than the larger of their sds?"""
    out = []
    for a, b in zip(order, order[1:]):
        sa, sb = summary[a][split][key], summary[b][split][key]
        gap = sa["mean"] - sb["mean"]
        out.append({"better": a, "worse": b, "gap": gap, "sd": max(sa["sd"], sb["sd"]),
                    "met": bool(gap > max(sa["sd"], sb["sd"]))})
    return out

