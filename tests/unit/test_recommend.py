"""The recommenders' parts on hand-made inputs: the split, the graphs, the losses, the reviewer, ranking, metrics."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from showcase_core.metrics.recommend import ranking_metrics
from showcase_core.recommend import training
from showcase_core.recommend.alignrec import AlignRec
from showcase_core.recommend.bprmf import BPRMF
from showcase_core.recommend.graph import item_knn_graph, place_similarity, user_item_adjacency
from showcase_core.recommend.interactions import TEST, TRAIN, VAL, build_interactions
from showcase_core.recommend.lightgcn import LightGCN
from showcase_core.recommend.losses import bpr_loss
from showcase_core.recommend.popularity import Popularity
from showcase_core.recommend.r2mr import DISPARITY, HIGH, LOW, R2MR, factor_scores, quality_states


def reviews(rows):
    return pa.table({"user_id": [r[0] for r in rows], "business_id": [r[1] for r in rows],
                     "rating": [float(r[2]) for r in rows], "time_ms": pa.array([r[3] for r in rows], pa.int64())})


def split_of(x, user, item):
    u, i = x.users.index(user), x.items.index(item)
    return int(x.split[(x.user == u) & (x.item == i)][0])


def test_leave_one_out_split_by_time_with_repeats_collapsed_and_short_users_in_train():
    rows = [("a", "x", 1, 10), ("a", "y", 2, 20), ("a", "z", 3, 30), ("a", "x", 4, 50),  # x again, latest
            ("b", "x", 5, 1), ("b", "y", 1, 2)]
    x = build_interactions(reviews(rows), cold_fraction=0.0)
    assert len(x.user) == 5  # a's two reviews of x are one interaction
    assert [split_of(x, "a", b) for b in ("y", "z", "x")] == [TRAIN, VAL, TEST]
    assert x.rating[(x.user == 0) & (x.item == x.items.index("x"))].tolist() == [4.0]  # the latest review's
    assert [split_of(x, "b", b) for b in ("x", "y")] == [TRAIN, TRAIN]  # fewer than 3 interactions


def test_split_does_not_depend_on_row_order_and_unknown_times_are_seeded():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"b{b}", 4, None) for u in range(30) for b in rng.choice(40, 5, replace=False)]
    first = build_interactions(reviews(rows), 0.1, seed=3)
    again = build_interactions(reviews([rows[i] for i in rng.permutation(len(rows))]), 0.1, seed=3)
    key = lambda x: sorted(zip(np.array(x.users)[x.user], np.array(x.items)[x.item], x.split))  # noqa: E731
    assert key(first) == key(again)
    other_seed = build_interactions(reviews(rows), 0.1, seed=4)
    assert key(first) != key(other_seed)


def test_cold_items_are_test_only_and_about_the_fraction_asked():
    rows = [(f"u{u}", f"b{b}", 4, u * 100 + b) for u in range(50) for b in range(0, 200, 7)]
    x = build_interactions(reviews(rows), cold_fraction=0.25, seed=1)
    assert 0.1 < x.cold.mean() < 0.4
    assert set(x.split[x.cold[x.item]].tolist()) == {TEST}
    warm_test = x.split[~x.cold[x.item]] == TEST
    assert warm_test.sum() == 50 and (x.split[~x.cold[x.item]] == VAL).sum() == 50  # one of each per user


def test_empty_ids_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="empty business_id"):
        build_interactions(reviews([("a", "", 4, 1)]))


def test_bpr_loss_is_softplus_of_the_negative_margin():
    user, pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert bpr_loss(user, pos, neg).item() == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_lightgcn_propagation_is_the_mean_of_normalised_layers():
    user, item = np.array([0, 0, 1]), np.array([0, 1, 1])
    adjacency = user_item_adjacency(user, item, 2, 2)
    a = np.zeros((4, 4))
    for u, i in zip(user, item):
        a[u, 2 + i] = a[2 + i, u] = 1
    d = a.sum(1) ** -0.5
    norm = d[:, None] * a * d[None, :]
    assert np.allclose(adjacency.to_dense().numpy(), norm)
    model = LightGCN(2, 2, adjacency, dim=3, layers=2)
    e0 = model.embedding.weight.detach().numpy()
    expected = (e0 + norm @ e0 + norm @ norm @ e0) / 3
    users, items = model.propagate()
    assert np.allclose(torch.cat([users, items]).detach().numpy(), expected, atol=1e-6)


def test_place_similarity_is_a_gaussian_of_the_great_circle_distance():
    a = torch.tensor([[40.0, -74.0]])
    b = torch.tensor([[40.0, -74.0], [40.0 + 2.0 / 111.19, -74.0], [41.0, -74.0]])  # here, 2 km north, 111 km north
    near = place_similarity(a, b, scale_km=2.0)[0]
    assert near[0] == pytest.approx(1.0) and near[1] == pytest.approx(np.exp(-0.5), abs=1e-3)
    assert near[2] < 1e-6


def test_a_near_business_becomes_a_neighbour_over_a_slightly_more_alike_far_one():
    content = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.3], [0.0, 1.0]])
    place = torch.tensor([[40.0, -74.0], [40.5, -74.0], [40.0, -74.001], [float("nan"), float("nan")]])
    by_content = item_knn_graph([content], k=1).to_dense()
    by_both = item_knn_graph([content], k=1, place=place, place_scale_km=2.0).to_dense()
    assert by_content[0, 1] > 0 and by_content[0, 2] == 0  # item 1 looks more alike
    assert by_both[0, 2] > 0 and by_both[0, 1] == 0  # item 2 is 85 m away, item 1 55 km
    assert by_both[3, 2] > 0  # an unknown place adds nothing (no NaN): the content still finds its nearest


def test_item_knn_graph_keeps_k_neighbours_never_itself():
    content = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.0, 0.0]])
    graph = item_knn_graph([content], k=1).to_dense()
    assert graph.diagonal().abs().sum() == 0
    assert graph[0, 1] > 0 and graph[2, 3] > 0 and graph[0, 2] == 0  # nearest neighbour only (and its reverse)
    assert graph[4].abs().sum() == 0 and graph[:, 4].abs().sum() == 0  # no content, no neighbours


def tiny_alignrec(cls=AlignRec, **settings):
    user, item = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 0])
    image = torch.eye(4)[:, :4]
    cold = torch.tensor([False, False, False, True])
    model = cls(3, 4, user_item_adjacency(user, item, 3, 4), user, item, image, image.clone(), cold, dim=4,
                **settings)
    return model, user, item


def test_inter_content_alignment_on_identical_orthogonal_modalities():
    model, _, _ = tiny_alignrec(ica_weight=1.0)
    for tower in (model.project_image, model.project_text):  # identity projections: p_I = p_T = the content
        for layer in (tower[0], tower[2]):
            layer.weight.data = torch.eye(4)
            layer.bias.data.zero_()
    _, parts = model(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 2]))
    # two items, orthogonal one-hot content, τ = 0.2: each row -log(e^5 / (e^5 + e^0))
    assert parts["ica"] == pytest.approx(math.log(1 + math.exp(-5.0)), rel=1e-5)


def test_a_cold_item_is_scored_by_its_content_not_its_id():
    model, _, _ = tiny_alignrec()
    _, items = model.representations()
    model.ids.embedding.weight.data[3 + 3] += 5.0  # the cold item's (untrained) ID embedding
    _, again = model.representations()
    assert torch.allclose(items[3], again[3])
    model.image[3] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    _, moved = model.representations()
    assert not torch.allclose(items[3], moved[3])


def test_content_gates_the_item_id_and_a_cold_item_takes_its_warm_neighbours_id():
    user, item = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 0])
    content = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.95, 0.05]])  # item 3 (cold) is like 0 and 1
    cold = torch.tensor([False, False, False, True])
    model = AlignRec(3, 4, user_item_adjacency(user, item, 3, 4), user, item, content, content.clone(), cold,
                     dim=4, knn=2)
    out = model.parts()
    h_user, h_item = model.ids.propagate()
    assert torch.allclose(out["h_item"][:3], h_item[:3])
    assert torch.allclose(out["h_item"][3], (h_item[0] + h_item[1]) / 2)  # not its own untrained ID, nor item 2's
    ego = model.ids.embedding.weight[3:].detach().clone()
    ego[3] = (ego[0] + ego[1]) / 2
    gated = ego * torch.sigmoid(model.project_image(content))
    expected = gated + model.item_graph.to_dense() @ gated
    assert torch.allclose(out["c_image"], expected, atol=1e-6)
    assert torch.allclose(out["user"][0], h_user[0] + out["c_tilde"][0], atol=1e-6)  # user 0's one train item
    owner = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.05, 1.0]])  # by owner photos, 3 is like 1 and 2
    model = AlignRec(3, 4, user_item_adjacency(user, item, 3, 4), user, item, content, content.clone(), cold,
                     owner=owner, dim=4, knn=2)
    _, h_item = model.ids.propagate()
    assert torch.allclose(model.parts()["h_item"][3], (h_item[1] + h_item[2]) / 2)


def test_reviewer_score_is_the_mean_over_users_and_factors_of_the_sigmoid():
    model, user, item = tiny_alignrec(R2MR, factors=2)
    out = model.parts()
    factors = model.factors(out["h_user"]).detach().numpy()  # [U, K, d]
    projected = model.review["image"](model.image).detach().numpy()  # the photos' own content, not the ID
    got = model.scores(out, "image", torch.arange(4), exact=True).detach().numpy()
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for i in range(3):  # warm items: over their train users
        users = user[item == i]
        assert got[i] == pytest.approx(np.mean([sigmoid(factors[j] @ projected[i]).mean() for j in users]), rel=1e-5)
    assert got[3] == pytest.approx(sigmoid(factors.mean(0) @ projected[3]).mean(), rel=1e-5)  # cold: the mean user
    sampled = np.mean([model.scores(out, "image", torch.arange(4)).detach().numpy() for _ in range(300)], axis=0)
    assert np.allclose(sampled, got, atol=0.02)  # a training step's estimate has the same expectation


def test_reviewer_loss_is_the_cross_entropy_of_each_modality_alone_and_leaves_the_ids_alone():
    model, _, _ = tiny_alignrec(R2MR, factors=2)
    out = model.parts()
    users, positives, negatives = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 0])
    loss = model.review_loss(out, users, positives, negatives)
    factors = model.factors(out["h_user"][users]).detach()
    expected = 0.0
    for m in ("image", "text"):
        content = model.review[m](model.raw(m)).detach()
        s = lambda items: torch.sigmoid((factors * content[items][:, None, :]).sum(-1)).mean(-1)  # noqa: E731
        expected += -(torch.log(s(positives)) + torch.log(1 - s(negatives))).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert model.ids.embedding.weight.grad is None  # users are learnt by the ranking alone
    assert model.review["image"].weight.grad.abs().sum() > 0 and model.user_factors.weight.grad.abs().sum() > 0
    assert model.project_text[0].weight.grad is None  # a probe of the content: the ranking's view is left alone


def test_a_kept_rewrite_raises_the_fused_score_but_not_the_reviewers_verdict_on_the_content_as_given():
    from types import SimpleNamespace

    from sklearn.metrics import roc_auc_score

    from showcase_core.recommend.evaluation import reviewer_auc

    model, user, item = tiny_alignrec(R2MR, factors=2)
    with torch.no_grad():
        out = model.parts()
        factors = model.factors(out["h_user"])[torch.as_tensor(user[item == 0])].reshape(-1, 4)  # item 0's users
        liked = torch.linalg.lstsq(factors, torch.full((4, 1), 50.0)).solution.flatten()  # every factor · it = 50
        model.review["image"].weight.copy_(torch.eye(4))  # photos as given: item 0's are e_0
        model.review["text"].weight.zero_()
        model.review["text"].weight[:, 0] = liked  # item 0's text is what its users like: s^text ≈ 1
        model.rewrite["image"][2].weight.zero_()
        model.rewrite["image"][2].bias.copy_(liked)  # the rewriter writes photos its users like
        given = model.scores(out, "image", torch.arange(4), exact=True)
        model.cfg["eta"] = float(given[0])  # item 0: photos at η (poor), text above: a disparity
        review = model.review_items(out)
    assert 0 in review["rewritten"]["image"].tolist()
    assert torch.allclose(review["score_image"], given)  # the verdict on the photos as given
    assert review["kept_score_image"][0] > 0.99 > review["score_image"][0]  # the rewrite's own score
    noise = np.array([True, False, False, False])
    data = SimpleNamespace(interactions=SimpleNamespace(cold=np.array([False, False, False, True])))
    auc = reviewer_auc(model, data, noise, np.zeros(4, bool))
    assert auc["auc_image"] == pytest.approx(roc_auc_score(noise[:3], 1 - given[:3].numpy()))
    assert auc["poor_rewritten_image"] == 1.0


def test_quality_states_and_fusion_extremes():
    states = quality_states(torch.tensor([0.7, 0.7, 0.2, 0.1]), torch.tensor([0.6, 0.2, 0.9, 0.3]), 0.5)
    assert states.tolist() == [HIGH, DISPARITY, DISPARITY, LOW]
    model, _, _ = tiny_alignrec(R2MR)
    out = model.parts()
    index = torch.tensor([0, 1])
    ones, zeros, halves = torch.ones(2), torch.zeros(2), torch.full((2,), 0.5)
    c_image, c_text, h = out["c_image"][index], out["c_text"][index], out["h_item"][index]
    alignrec = h + (c_image + c_text) / 2
    length = alignrec.norm(dim=1, keepdim=True)
    assert torch.allclose(model.fuse(out, index, halves, halves, c_image, c_text), alignrec, atol=1e-6)
    content = model.fuse(out, index, ones, ones, c_image, c_text)  # trusted: the content's direction only
    assert torch.allclose(content, (c_image + c_text) / (c_image + c_text).norm(dim=1, keepdim=True) * length)
    ids = model.fuse(out, index, zeros, zeros, c_image, c_text)  # poor: the ID's direction only
    assert torch.allclose(ids, h / h.norm(dim=1, keepdim=True) * length)
    mixed = model.fuse(out, index, torch.tensor([0.9, 0.1]), torch.tensor([0.2, 0.7]), c_image, c_text)
    assert torch.allclose(mixed.norm(dim=1, keepdim=True), length)  # the scores never change the length
    assert torch.allclose(factor_scores(torch.zeros(1, 3, 2), torch.ones(1, 2)), torch.tensor([0.5]))


def test_top_n_equals_brute_force_and_never_returns_an_excluded_item():
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 5, generator=gen), torch.randn(30, 5, generator=gen)
    exclude = [np.array([3, 4]), np.array([], np.int64), *[np.arange(i) for i in range(5)]]
    scores, top = training.top_n(users, items, 6, exclude)
    brute = users.numpy() @ items.numpy().T
    for u in range(7):
        brute[u, exclude[u]] = -np.inf
        assert top[u].tolist() == np.argsort(-brute[u], kind="stable")[:6].tolist()
        assert not set(top[u].tolist()) & set(exclude[u].tolist())


def test_ranking_metrics_on_a_hand_made_ranking():
    top = np.array([[5, 2, 9], [1, 0, 3], [4, 4, 4]])
    held = [np.array([2, 7]), np.array([8]), np.array([], np.int64)]  # the third user has nothing held out
    m = ranking_metrics(top, held, ks=(2, 3))
    assert m["users"] == 2
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["precision@3"] == pytest.approx((1 / 3 + 0) / 2)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / ideal + 0) / 2)


def test_negatives_avoid_the_users_train_items_and_cold_items():
    user, item = np.repeat(np.arange(4), 3), np.array([0, 1, 2, 1, 2, 3, 2, 3, 4, 0, 4, 5])
    codes = training.train_sets(user, item, 8)
    warm = np.array([True] * 7 + [False])
    negatives = training.sample_negatives(np.repeat(np.arange(4), 500), codes, 8, warm, np.random.default_rng(0))
    for u in range(4):
        drawn = set(negatives[u * 500:(u + 1) * 500].tolist())
        assert not drawn & set(item[user == u].tolist()) and 7 not in drawn


def test_bpr_mf_learns_a_planted_taste_that_popularity_cannot_see():
    rng = np.random.default_rng(0)
    taste = rng.integers(0, 4, 200)
    rows = [(f"u{u:03d}", f"b{b:03d}", 4, t) for u in range(200)
            for t, b in enumerate(rng.choice(np.arange(taste[u], 60, 4), 6, replace=False))]
    x = build_interactions(reviews(rows), cold_fraction=0.0)
    tu, ti = x.pairs(TRAIN)
    codes, warm = training.train_sets(tu, ti, len(x.items)), ~x.cold
    torch.manual_seed(0)
    model = BPRMF(len(x.users), len(x.items), dim=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    first = training.train_epoch(model, step, tu, ti, codes, warm, 128, 0, 0)["bpr"]
    for epoch in range(1, 25):
        last = training.train_epoch(model, step, tu, ti, codes, warm, 128, epoch, 0)["bpr"]
    assert last < first / 2
    recall = {}
    for name, m in (("bprmf", model), ("popularity", Popularity(len(x.users), len(x.items), ti))):
        with torch.no_grad():
            users, items = m.representations()
        _, top = training.top_n(users, items, 10, x.by_user(TRAIN))
        recall[name] = ranking_metrics(top.numpy(), x.by_user(TEST), ks=(10,))["recall@10"]
    assert recall["bprmf"] > 2 * recall["popularity"]


def test_top_n_pads_with_minus_one_when_fewer_items_are_allowed():
    scores, top = training.top_n(torch.ones(1, 2), torch.ones(3, 2), 5, [np.array([1])])
    assert top.tolist() == [[0, 2, -1, -1, -1]] or top.tolist() == [[2, 0, -1, -1, -1]]
    assert torch.isneginf(scores[0, 2:]).all()


def planted_taste_data(users=200, items=60, seed=0):
    from showcase_core.recommend.data import RecommenderData

    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 4, users)
    rows = [(f"u{u:03d}", f"b{b:03d}", 4, t) for u in range(users)
            for t, b in enumerate(rng.choice(np.arange(taste[u], items, 4), 6, replace=False))]
    x = build_interactions(reviews(rows), cold_fraction=0.1)
    return RecommenderData(x, np.zeros((len(x.items), 4), np.float32), np.zeros((len(x.items), 4), np.float32), 4)


def test_evaluation_keeps_the_best_checked_epoch_and_splits_the_held_out_items():
    from showcase_core.recommend import evaluation

    data = planted_taste_data()
    x = data.interactions
    settings = {"dim": 8, "reg": 1e-4}
    model, kept = evaluation.fit("bprmf", data, settings, epochs=12, batch_size=128, lr=0.02, eval_every=4, seed=0)
    assert kept["epoch"] in (3, 7, 11)
    again = training.evaluate(model, x, VAL, data.scorable("bprmf"))["recall@20"]
    assert again == pytest.approx(kept["val_recall@20"])  # the kept weights are the ones that scored it
    tail = evaluation.long_tail(data)
    popularity = np.bincount(data.train[1], minlength=len(x.items))
    assert not (tail & x.cold).any() and tail.sum() == (~x.cold).sum() - round(0.2 * (~x.cold).sum())
    assert popularity[tail].max() <= popularity[~x.cold & ~tail].min()  # the head is the most popular
    metrics = evaluation.model_metrics(model, "bprmf", data, planted=None)
    assert metrics["test_cold"]["recall@20"] == 0.0 and metrics["test_cold"]["users"] > 0  # no content, no ID
    assert metrics["test_long_tail"]["users"] <= metrics["test"]["users"]
    popular, _ = evaluation.fit("popularity", data, settings, 12, 128, 0.02, 4, 0)
    assert metrics["test"]["recall@20"] > evaluation.model_metrics(popular, "popularity", data, None)["test"][
        "recall@20"]


def test_summary_over_seeds_and_the_order_check():
    from showcase_core.recommend.evaluation import order_met, summarize

    per_seed = [{"a": {"test": {"recall@20": v}}, "b": {"test": {"recall@20": w}}}
                for v, w in ((0.30, 0.20), (0.32, 0.21), (0.28, 0.25))]
    summary = summarize(per_seed)
    cell = summary["a"]["test"]["recall@20"]
    assert cell["mean"] == pytest.approx(0.30) and cell["sd"] == pytest.approx(0.02) and len(cell["values"]) == 3
    check = order_met(summary, ["a", "b"])[0]
    assert check["gap"] == pytest.approx(0.30 - 0.22) and check["met"]  # 0.08 > max(0.02, sd of b = 0.0265)
    close = summarize([{"a": {"test": {"recall@20": v}}, "b": {"test": {"recall@20": v - 0.001}}}
                       for v in (0.1, 0.2, 0.3)])
    assert not order_met(close, ["a", "b"])[0]["met"]  # a gap inside one sd is not an order


def test_expected_random_ranking_matches_its_definition():
    from showcase_core.recommend.evaluation import expected_random

    train, held = [np.array([0, 1]), np.array([], np.int64)], [np.array([5]), np.array([2, 3])]
    out = expected_random(train, held, items=10, ks=(5, 20))
    # user 0: 8 candidates, 1 held out; user 1: 10 candidates, 2 held out
    assert out["recall@5"] == pytest.approx((5 / 8 + 5 / 10) / 2)
    assert out["precision@5"] == pytest.approx((1 / 8 + 2 / 10) / 2)
    assert out["recall@20"] == pytest.approx(1.0)  # every candidate is ranked within 20
    rng = np.random.default_rng(0)
    draws = [ranking_metrics(np.array([rng.permutation(np.setdiff1d(np.arange(10), t))[:5] for t in train]), held,
                             ks=(5,))["ndcg@5"] for _ in range(4000)]
    assert out["ndcg@5"] == pytest.approx(np.mean(draws), abs=0.01)


def test_oracle_ranks_by_the_worlds_own_chance_of_a_review():
    from types import SimpleNamespace

    from showcase_core.recommend.evaluation import oracle_ranking

    world = {
        "entities": [{"name": "A"}, {"name": "B"}],
        "users": [{"user_id": "u0", "taste": {"A": 1.0}, "area": 0}, {"user_id": "u1", "taste": {"A": 1.0}, "area": 1},
                  {"user_id": "u2", "taste": {"B": 1.0}, "area": 0}],
        "businesses": [{"business_id": "b0", "menu": ["A"], "area": 0, "popularity": 1.0},
                       {"business_id": "b1", "menu": ["A"], "area": 1, "popularity": 1.0},
                       {"business_id": "b2", "menu": ["B"], "area": 0, "popularity": 1.0},
                       {"business_id": "b3", "menu": ["A"], "area": 0, "popularity": 3.0}],
    }
    nothing = [np.zeros(0, np.int64)] * 2
    x = SimpleNamespace(users=np.array(["u0", "u2"]), items=np.array(["b0", "b1", "b2", "b3"]),
                        by_user=lambda split: nothing)
    top = oracle_ranking(SimpleNamespace(interactions=x), world, 4)
    # u0 likes A at home: the popular b3, then b0; b2 (B, at home) has u2 to draw instead; b1 is in another area
    assert top[0].tolist() == [3, 0, 2, 1]
    assert top[1][0] == 2  # u2: the only B business
    world_without_places = {**world, "users": [{k: v for k, v in u.items() if k != "area"} for u in world["users"]],
                            "businesses": [{k: v for k, v in b.items() if k not in ("area", "popularity")}
                                           for b in world["businesses"]]}
    assert set(oracle_ranking(SimpleNamespace(interactions=x), world_without_places, 4)[0][:3]) == {0, 1, 3}


def test_a_world_that_does_not_describe_the_reviews_is_one_line_naming_an_id():
    from types import SimpleNamespace

    from jobs.common import UserError
    from jobs.evaluate import check_world_describes

    world = {"users": [{"user_id": "u0"}, {"user_id": "u1"}], "businesses": [{"business_id": "b0"}]}
    check_world_describes(world, SimpleNamespace(users=["u0", "u1"], items=["b0"]), "W")  # a superset is fine
    with pytest.raises(UserError, match=r"--world W: it does not describe 1 business\(s\) of the reviews, e.g. 'b7'"):
        check_world_describes(world, SimpleNamespace(users=["u1"], items=["b0", "b7"]), "W")
