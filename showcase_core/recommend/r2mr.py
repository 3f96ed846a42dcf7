"""R2MR's modality reviewer (KDD 2025) on top of AlignRec: trust an item's good modalities, fall back to its ID
where a modality is poor.

- Users decoupled into K factors: P_j = reshape(h_j W_u) ∈ R^{K×d}, W_u ∈ R^{d×Kd}.
- Quality of modality m ∈ {I (photos), T (reviews)} of item i, over N_i (its train users):
  s_i^m = mean_{j ∈ N_i, k ≤ K} σ(ẽ_i^m · p_j^k), ẽ_i^m = e_i^m W_m: the modality's content as given (the mean CLIP
  vector), projected, as in the paper (not AlignRec's view c̃^m, which is the item's ID gated by the content and
  would score an item well whatever its photos show).
  Exact over all of N_i for ranking and for the reviewer's report; a training step estimates it from
  ``sampled_users`` users of N_i drawn with replacement (the same expectation, bounded cost). An item with no train
  user (a cold item) is reviewed against the mean user factors.
- Training: the scores are trained end to end through the fusion, and by ``review_loss``: each modality alone should
  tell a user's item from a random one (binary cross-entropy of mean_k σ(ẽ^m · p^k)), with the users' factors
  taken from ID embeddings that only the ranking trains. Through the fusion alone the reviewer barely learned (every
  score about 0.5), and with gradients into the users, a cluster of identical noise photos became a group ID that
  its visitors' embeddings remembered (photo AUC below 0.5). Weight ``review_weight``.
- States by a threshold η: high (both above), disparity (exactly one), low (both below): ``quality_states``.
- Fusion: item = Σ_m [s_i^m c̃_i^m + (1 - s_i^m) h_i] (the paper concatenates the two modality terms and scores
  them against [u ‖ u]; the sum is the same score), rescaled to the norm of AlignRec's item h_i + (c̃^I + c̃^T)/2,
  which it equals at s = 0.5: the scores choose the direction (content or ID), not the length. The rescaling is
  this project's. Without it s also set the item's length (c̃ is longer than h: median norms 1.34 and 1.11 in
  AlignRec on the large world), so an item with low scores sank for all users (large world, seed 0: Recall@20 on
  the planted businesses 6.3 %, on cold businesses 1.6 %; the same model ranked with s = 0.5, 8.0 % and 4.3 %;
  rescaled, 8.2 % and 3.6 %). Removing instead the change's component along the mean user did nothing: the bias
  was the length. A cold item's h_i is its warm neighbours' mean (AlignRec).
- Rewriter: the paper trains a VQGAN-style generator; here two small MLPs (photos → reviews, reviews → photos, on
  the CLIP content) trained with a cosine loss on the batch's high-quality items. For a disparity item the
  poor modality's content is replaced by the one rewritten from its good modality when the reviewer scores the
  rewrite higher, and its view c̃ is rebuilt from it (at ranking time).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .alignrec import AlignRec, projector

LOW, DISPARITY, HIGH = 0, 1, 2
EXACT_CHUNK = 65536
DEFAULTS = {"factors": 4, "eta": 0.5, "sampled_users": 8, "rewrite_weight": 0.1, "review_weight": 0.1}


def quality_states(score_image: torch.Tensor, score_text: torch.Tensor, eta: float) -> torch.Tensor:
    """LOW, DISPARITY or HIGH per item from its two modality scores."""
    above = (score_image > eta).long() + (score_text > eta).long()
    return above  # 0 = LOW, 1 = DISPARITY, 2 = HIGH


def factor_scores(factors: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """mean_k σ(content · factors[..., k, :]): factors [..., K, d], content [..., d] -> [...]."""
    return torch.sigmoid((factors * content[..., None, :]).sum(-1)).mean(-1)


class R2MR(AlignRec):
    def __init__(self, users: int, items: int, adjacency: torch.Tensor, train_user: np.ndarray,
                 train_item: np.ndarray, image: torch.Tensor, text: torch.Tensor, cold: torch.Tensor,
                 owner: torch.Tensor | None = None, place: torch.Tensor | None = None, **settings):
        own = {k: settings.pop(k, v) for k, v in DEFAULTS.items()}
        super().__init__(users, items, adjacency, train_user, train_item, image, text, cold, owner, place, **settings)
        self.cfg.update(own)
        d, k = self.cfg["dim"], own["factors"]
        self.user_factors = nn.Linear(d, k * d, bias=False)  # W_u
        dims = {"image": image.shape[1], "text": text.shape[1]}
        self.review = nn.ModuleDict({m: nn.Linear(dims[m], d, bias=False) for m in dims})  # W_m on raw content
        self.rewrite = nn.ModuleDict({"image": projector(dims["text"], dims["image"]),  # into that modality
                                      "text": projector(dims["image"], dims["text"])})
        order = np.argsort(train_item, kind="stable")
        self.register_buffer("item_users", torch.as_tensor(np.asarray(train_user)[order], dtype=torch.long), persistent=False)
        indptr = np.searchsorted(np.asarray(train_item)[order], np.arange(items + 1))
        self.register_buffer("item_indptr", torch.as_tensor(indptr, dtype=torch.long), persistent=False)

    def raw(self, modality: str) -> torch.Tensor:
        """[I, D_m]: every item's content of the modality as given (the mean CLIP vector)."""
        return self.image if modality == "image" else self.text

    def factors(self, h_user: torch.Tensor) -> torch.Tensor:
        return self.user_factors(h_user).view(h_user.shape[0], self.cfg["factors"], self.cfg["dim"])

    def scores(self, out: dict, modality: str, index: torch.Tensor, content: torch.Tensor | None = None,
               exact: bool = False) -> torch.Tensor:
        """s^m of the items ``index`` ([n]); ``content`` overrides their content e^m (a rewrite being reviewed)."""
        content = self.raw(modality)[index] if content is None else content
        projected = self.review[modality](content)
        factors = self.factors(out["h_user"])  # [U, K, d]
        start, end = self.item_indptr[index], self.item_indptr[index + 1]
        degree = end - start
        result = factor_scores(factors.mean(0), projected)  # the mean user: the cold items' score
        if exact:  # every (item, user) interaction, in chunks: O(chunk * K * d) at a time
            rows = torch.repeat_interleave(torch.arange(len(index), device=degree.device), degree)
            first = torch.repeat_interleave(torch.cumsum(degree, 0) - degree, degree)
            positions = start[rows] + torch.arange(len(rows), device=degree.device) - first
            sums = torch.zeros(len(index), device=degree.device)
            for at in range(0, len(rows), EXACT_CHUNK):
                r, users = rows[at:at + EXACT_CHUNK], self.item_users[positions[at:at + EXACT_CHUNK]]
                sums = sums.index_add(0, r, factor_scores(factors[users], projected[r]))
            return torch.where(degree > 0, sums / degree.clamp_min(1), result)
        m = self.cfg["sampled_users"]
        draw = start[:, None] + (torch.rand(len(index), m, device=degree.device) * degree[:, None]).long()
        users = self.item_users[draw.clamp_max(max(len(self.item_users) - 1, 0))]  # [n, m]
        sampled = factor_scores(factors[users], projected[:, None, :].expand(-1, m, -1)).mean(-1)
        return torch.where(degree > 0, sampled, result)

    def fuse(self, out: dict, index: torch.Tensor, s_image: torch.Tensor, s_text: torch.Tensor,
             c_image: torch.Tensor, c_text: torch.Tensor) -> torch.Tensor:
        h = out["h_item"][index]
        fused = (s_image[:, None] * c_image + (1 - s_image[:, None]) * h
                 + s_text[:, None] * c_text + (1 - s_text[:, None]) * h)
        length = (h + (c_image + c_text) / 2).norm(dim=1, keepdim=True)
        return fused * (length / fused.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def items(self, out: dict, index: torch.Tensor | None = None) -> torch.Tensor:
        if index is None:
            return self.review_items(out)["item"]
        s_image, s_text = self.scores(out, "image", index), self.scores(out, "text", index)
        return self.fuse(out, index, s_image, s_text, out["c_image"][index], out["c_text"][index])

    @torch.no_grad()
    def review_items(self, out: dict | None = None) -> dict:
        """Every item's exact scores of its content as given (``score_*``: the reviewer's verdict), its states, the
        rewrites kept and the scores of the content kept (``kept_score_*``: a kept rewrite's own score, which the
        fusion uses), and its fused representation."""
        out = out or self.parts()
        index = torch.arange(out["p_image"].shape[0], device=out["p_image"].device)
        content = {m: self.raw(m).clone() for m in ("image", "text")}
        given = {m: self.scores(out, m, index, exact=True) for m in ("image", "text")}
        s = {m: given[m].clone() for m in given}
        states = quality_states(s["image"], s["text"], self.cfg["eta"])
        rewritten = {}
        for poor, good in (("image", "text"), ("text", "image")):
            rows = torch.nonzero((states == DISPARITY) & (s[poor] <= self.cfg["eta"])).flatten()
            if len(rows):
                candidate = self.rewrite[poor](self.raw(good)[rows])
                s_new = self.scores(out, poor, rows, candidate, exact=True)
                better = s_new > s[poor][rows]
                content[poor][rows[better]] = candidate[better]
                s[poor][rows[better]] = s_new[better]
                rewritten[poor] = rows[better]
        project = {"image": self.project_image, "text": self.project_text}
        views = {m: self.content_view(out["ego_item"], project[m](content[m])) if m in rewritten else out[f"c_{m}"]
                 for m in ("image", "text")}
        item = self.fuse(out, index, s["image"], s["text"], views["image"], views["text"])
        return {"item": item, "score_image": given["image"], "score_text": given["text"], "states": states,
                "rewritten": rewritten, "kept_score_image": s["image"], "kept_score_text": s["text"]}

    def extra_loss(self, out: dict, users: torch.Tensor, positives: torch.Tensor,
                   negatives: torch.Tensor) -> tuple[torch.Tensor, dict]:
        review = self.review_loss(out, users, positives, negatives)
        rewrite, parts = self.rewrite_loss(out, torch.unique(positives))
        return self.cfg["review_weight"] * review + rewrite, {"review": float(review.detach()), **parts}

    def review_loss(self, out: dict, users: torch.Tensor, positives: torch.Tensor,
                    negatives: torch.Tensor) -> torch.Tensor:
        """Each modality on its own should tell a user's item from a random one: binary cross-entropy of the
        reviewer's mean_k σ(ẽ^m · p^k) on (user, positive) against (user, negative). The users' factors come from
        ID embeddings the ranking learns (detached here), so a modality cannot score well by making users remember
        which items share its content (a cluster of identical noise photos would otherwise act as a group ID)."""
        factors = self.factors(out["h_user"][users].detach())  # [B, K, d]
        loss = torch.zeros(())
        for modality in ("image", "text"):
            review, content = self.review[modality], self.raw(modality)
            positive = factor_scores(factors, review(content[positives])).clamp(1e-6, 1 - 1e-6)
            negative = factor_scores(factors, review(content[negatives])).clamp(1e-6, 1 - 1e-6)
            loss = loss - (torch.log(positive) + torch.log(1 - negative)).mean()
        return loss

    def rewrite_loss(self, out: dict, batch_items: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The rewriter's cosine loss on the batch's high-quality items (the reviewer's scores held fixed)."""
        with torch.no_grad():
            s_image, s_text = self.scores(out, "image", batch_items), self.scores(out, "text", batch_items)
            high = quality_states(s_image, s_text, self.cfg["eta"]) == HIGH
        if not high.any():  # nothing to learn from; the rewriters still take part (DDP reduces every parameter)
            return sum(p.sum() for p in self.rewrite.parameters()) * 0.0, {"rewrite": 0.0}
        rows = batch_items[high]
        image, text = self.image[rows], self.text[rows]
        loss = (2 - F.cosine_similarity(self.rewrite["image"](text), image).mean()
                - F.cosine_similarity(self.rewrite["text"](image), text).mean())
        return self.cfg["rewrite_weight"] * loss, {"rewrite": float(loss.detach())}
