import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
import torch

from showcase_core.metrics.ranking import div_at_k, precision_recall_f1_at_k
from showcase_core.selection import greedy_map
from showcase_core.selection.greedy import naive_greedy
from showcase_core.selection.data import Examples, SelectionData, batch_tensors
from showcase_core.selection.kernel import DPPKernel, KernelSet, dpp_log_likelihood
from showcase_core.selection.training import train_epoch


def random_kernels(gen, B, M, rank, jitter=0.0):
    V = torch.randn(B, M, rank, generator=gen, dtype=torch.float64)
    return V @ V.transpose(1, 2) + jitter * torch.eye(M, dtype=torch.float64)


def test_batched_greedy_equals_naive_greedy_on_many_random_kernels():
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(150):
        M = int(torch.randint(1, 10, (1,), generator=gen))
        k = int(torch.randint(1, 6, (1,), generator=gen))
        rank = int(torch.randint(1, M + 1, (1,), generator=gen))  # low rank too: picks stop early
        L = random_kernels(gen, 6, M, rank, jitter=0.0 if trial % 2 else 1e-3)
        mask = torch.rand(6, M, generator=gen) < 0.8
        assert greedy_map(L, k, mask).tolist() == naive_greedy(L, k, mask)
        checked += 6
    assert checked == 900


def test_ground_sets_smaller_than_k_are_padded_with_minus_one():
    L = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1) * torch.tensor([1.0, 3.0, 2.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    picks = greedy_map(L, 3, mask)
    assert picks.tolist() == [[1, 0, -1], [3, 1, 2]]
    assert picks.dtype == torch.long and picks.shape == (2, 3)
    assert greedy_map(L, 3, torch.zeros(2, 4, dtype=torch.bool)).tolist() == [[-1, -1, -1]] * 2


def test_duplicate_photos_are_never_picked_twice():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # photos 0 and 1 are the same
    L = (f @ f.T)[None]
    picks = greedy_map(L, 3)
    assert picks.tolist() == [[0, 2, -1]]  # after 0 and 2 the set is full rank: its duplicate adds nothing
    assert naive_greedy(L, 3) == picks.tolist()


def test_greedy_rejects_badly_shaped_inputs():
    with pytest.raises(ValueError, match=r"L must be \[B, M, M\]"):
        greedy_map(torch.zeros(3, 3), 2)
    with pytest.raises(ValueError, match="mask must be"):
        greedy_map(torch.zeros(1, 3, 3), 2, torch.ones(1, 4, dtype=torch.bool))


def test_log_likelihood_matches_direct_determinants_and_ignores_padding():
    torch.manual_seed(0)
    model = DPPKernel(8, "img+text").double()
    profile = torch.randn(2, 16, dtype=torch.float64)
    photos = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    photos[1, 3:] = 0
    L = model(profile, photos, mask)
    y = torch.tensor([[0, 3], [2, 0]])
    y_mask = torch.tensor([[True, True], [True, False]])
    ll = dpp_log_likelihood(L, mask, y, y_mask)
    # the same numbers from plain determinants of the unpadded matrices
    L0, L1 = L[0], L[1][:3, :3]
    want0 = torch.logdet(L0[[0, 3]][:, [0, 3]]) - torch.logdet(L0 + torch.eye(5, dtype=torch.float64))
    want1 = torch.logdet(L1[[2]][:, [2]]) - torch.logdet(L1 + torch.eye(3, dtype=torch.float64))
    assert torch.allclose(ll, torch.stack([want0, want1]))
    assert bool((ll < 0).all())  # a probability


def test_gradients_reach_both_mlps_and_training_raises_the_likelihood():
    torch.manual_seed(1)
    model = DPPKernel(8, "img+text")
    profile, photos = torch.randn(16, 16), torch.randn(16, 6, 8)
    mask = torch.ones(16, 6, dtype=torch.bool)
    y, y_mask = torch.zeros(16, 2, dtype=torch.long), torch.tensor([[True, False]] * 16)
    y[:, 0] = 2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        loss = -dpp_log_likelihood(model(profile, photos, mask), mask, y, y_mask).mean()
        opt.zero_grad()
        loss.backward()
        assert model.profile_mlp[0].weight.grad.abs().sum() > 0 and model.photo_mlp[0].weight.grad.abs().sum() > 0
        opt.step()
        first = first if first is not None else float(loss)
    assert float(loss) < first - 0.5


def small_selection_data(n: int = 24, photos: int = 40, dim: int = 8) -> SelectionData:
    rng = np.random.default_rng(3)
    ground = np.full((n, 6), -1, np.int32)
    y_pos = np.full((n, 2), -1, np.int32)
    for i in range(n):
        size = int(rng.integers(2, 7))
        ground[i, :size] = rng.choice(photos, size, replace=False)
        y_pos[i, :1 + i % 2] = [0, 1][:1 + i % 2]  # the first one or two photos of the ground set
    ex = Examples(ground, y_pos, rng.normal(size=(n, dim)).astype(np.float32),
                  rng.normal(size=(n, dim)).astype(np.float32), np.ones(n, bool),
                  [f"u{i}" for i in range(n)], [f"b{i}" for i in range(n)])
    return SelectionData([f"p{i}" for i in range(photos)], rng.normal(size=(photos, dim)).astype(np.float32),
                         {"train": ex})


def shuffled_batches(data, ex, batch_size: int, epoch: int, seed: int):
    """In-memory examples in an epoch's seeded order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(ex))
    for start in range(0, len(order), batch_size):
        yield batch_tensors(data, ex, order[start:start + batch_size])


def adamw_step(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def step(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def test_kernels_trained_side_by_side_learn_exactly_as_each_trained_alone():
    data = small_selection_data()
    ex = data.splits["train"]

    def fresh(modality):
        torch.manual_seed(0)
        return DPPKernel(8, modality)

    together = KernelSet({m: fresh(m) for m in ("img", "text", "img+text")})
    step = adamw_step(together)
    joint = [train_epoch(together, step, shuffled_batches(data, ex, 5, epoch, 0))[0] for epoch in range(3)]
    for modality in ("img", "text", "img+text"):
        alone = KernelSet({modality: fresh(modality)})
        step = adamw_step(alone)
        losses = [train_epoch(alone, step, shuffled_batches(data, ex, 5, epoch, 0))[0][modality] for epoch in range(3)]
        assert losses == [epoch[modality] for epoch in joint]
        assert losses[-1] < losses[0]
        for name, value in alone.kernels[modality].state_dict().items():
            assert torch.equal(value, together.kernels[modality].state_dict()[name]), (modality, name)


def test_mlp_shapes_follow_the_paper_for_512_dimensional_clip():
    model = DPPKernel(512, "img+text")
    dims = [(m.in_features, m.out_features) for m in model.profile_mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [(1024, 512), (512, 512), (512, 256), (256, 128)]
    dims = [(m.in_features, m.out_features) for m in model.photo_mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [(512, 512), (512, 512), (512, 256), (256, 128)]
    assert [m.in_features for m in DPPKernel(512, "img").profile_mlp if isinstance(m, torch.nn.Linear)][0] == 512


def test_precision_recall_f1_by_hand():
    picks = [[1, 2, 3], [4, -1, -1]]
    relevant = [{1, 9}, {4}]
    s = precision_recall_f1_at_k(picks, relevant, 3)
    assert s["precision"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert s["recall"] == pytest.approx((1 / 2 + 1) / 2)
    p, r = s["precision"], s["recall"]
    assert s["f1"] == pytest.approx(2 * p * r / (p + r))


def test_paper_f1_is_the_harmonic_mean_of_averaged_precision_and_recall():
    p, r = 0.2521, 0.3437  # Table 3, img+text
    assert 2 * p * r / (p + r) == pytest.approx(0.2909, abs=1e-4)


def test_div_at_k_by_hand():
    same = np.array([[1.0, 0.0], [2.0, 0.0]])
    orthogonal = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    want = np.mean([1.0, 1 - 1 / np.sqrt(2), 1 - 1 / np.sqrt(2)])
    assert div_at_k([same]) == pytest.approx(0.0)
    assert div_at_k([orthogonal]) == pytest.approx(want)
    assert div_at_k([same, orthogonal, np.array([[1.0, 0.0]])]) == pytest.approx(want / 2)


def test_random_baseline_is_the_expected_random_precision_and_recall_whatever_the_batches():
    from showcase_core.selection.data import ExampleBatch
    from showcase_core.selection.training import PickScores, example_rngs, random_positions, random_scores

    # ground sets of 2, 4 and 9 photos with 1, 2 and 3 targets: E[hits] = min(k, |G|) * |Y| / |G|
    sizes, targets, k = (2, 4, 9), (1, 2, 3), 3
    mask = np.zeros((3, 9), bool)
    y = np.full((3, 3), -1, np.int64)
    for i, (g, t) in enumerate(zip(sizes, targets)):
        mask[i, :g] = True
        y[i, :t] = np.arange(t)
    photos = np.random.default_rng(0).normal(size=(3, 9, 4)).astype(np.float32) * mask[:, :, None]
    zeros = np.zeros((3, 4), np.float32)
    batch = ExampleBatch.of(photos, mask, y, zeros, zeros)
    keys = ["u1\tb1", "u2\tb2", "u3\tb3"]
    hits = [min(k, g) * t / g for g, t in zip(sizes, targets)]
    expected_p = np.mean([h / k for h in hits])
    expected_r = np.mean([h / t for h, t in zip(hits, targets)])
    row = random_scores(batch, keys, k, seed=0).scores()
    assert row["precision"] == pytest.approx(expected_p)
    assert row["recall"] == pytest.approx(expected_r)
    assert row["f1"] == pytest.approx(2 * expected_p * expected_r / (expected_p + expected_r))
    assert 0 < row["div"] < 2 and row["examples"] == 3
    # an example's draws follow its key, not its batch: scored in two batches and added up, the same row
    halves = [ExampleBatch.of(photos[s], mask[s], y[s], zeros[s], zeros[s]) for s in (slice(0, 1), slice(1, 3))]
    parts = [random_scores(h, keys[s], k, seed=0).sums() for h, s in zip(halves, (slice(0, 1), slice(1, 3)))]
    assert PickScores.of_sums(parts, k).scores() == pytest.approx(row, abs=1e-12)
    assert random_scores(batch, keys, k, seed=1).scores()["div"] != row["div"]
    # and sampling agrees: the mean over many random draws comes close to the expectation
    sampled, rngs = PickScores(k), example_rngs(7, keys)
    for _ in range(2000):
        sampled.add(batch, torch.as_tensor(random_positions(mask, k, rngs)))
    assert sampled.scores()["precision"] == pytest.approx(expected_p, rel=0.03)
    assert sampled.scores()["recall"] == pytest.approx(expected_r, rel=0.03)
    assert sampled.scores()["div"] == pytest.approx(row["div"], rel=0.05)


def test_a_batch_with_shared_ground_sets_picks_and_scores_as_each_pair_alone(tmp_path):
    """The assembler runs the DPP's photo terms once per distinct photo of a batch (pairs of one business share its
    ground set) and gathers them per pair: the same picks and scores as the dense kernel of each pair alone."""
    from showcase_core.features import GroundSet, Profile
    from showcase_core.selection.kernel import save_dpp
    from showcase_core.showcase import PairInputs, ShowcaseAssembler, shared_ground_sets

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dim, model = 16, DPPKernel(16, "img+text")
    save_dpp(model.state_dict(), {**model.config(), "encoder_id": "e"}, str(tmp_path / "dpp"), {})
    grounds = {b: GroundSet([f"{b}{j}" for j in range(n)], [f"u/{b}{j}" for j in range(n)],
                            rng.normal(size=(n, dim)).astype(np.float32)) for b, n in (("a", 7), ("b", 1), ("c", 12))}

    def pair(user: int, business: str) -> PairInputs:
        profile = Profile(rng.normal(size=dim).astype(np.float32), rng.normal(size=dim).astype(np.float32),
                          np.zeros((0, dim), np.float32), [], True)
        return PairInputs(f"user{user}", business, profile, grounds[business])

    pairs = [pair(i, b) for i, b in enumerate("aaabccac")]
    vectors, slots = shared_ground_sets(pairs)
    assert vectors.shape == (20, dim) and slots.shape == (8, 12)  # 7 + 1 + 12 distinct photos, not 8 x 12 slots
    assert (slots[1, :7] == slots[0, :7]).all() and (slots[0, 7:] == 20).all()
    assembler = ShowcaseAssembler(str(tmp_path / "dpp"), None, k=3)
    together = assembler.assemble(pairs, "r", "now")
    alone = [assembler.assemble([p], "r", "now")[0] for p in pairs]
    assert [r["image_ids"] for r in together] == [r["image_ids"] for r in alone]
    assert np.allclose(np.concatenate([r["image_scores"] for r in together]),
                       np.concatenate([r["image_scores"] for r in alone]), rtol=1e-5)
    # and the dense kernel of the padded batch (training's forward) agrees
    photos = np.zeros((8, 12, dim), np.float32)
    mask = np.zeros((8, 12), bool)
    for i, p in enumerate(pairs):
        photos[i, :len(p.ground.image_ids)], mask[i, :len(p.ground.image_ids)] = p.ground.vectors, True
    profile = torch.cat([torch.as_tensor(np.stack([p.profile.text for p in pairs])),
                         torch.as_tensor(np.stack([p.profile.photo for p in pairs]))], dim=-1)
    with torch.no_grad():
        dense = greedy_map(model(profile, torch.as_tensor(photos), torch.as_tensor(mask)).double(), 3,
                           torch.as_tensor(mask))
    assert [[p.ground.image_ids[j] for j in row if j >= 0] for p, row in zip(pairs, dense.tolist())] == \
        [r["image_ids"] for r in together]


def raw_world(rng, dim=4):
    """Raw tables of 3 businesses: b0 with 6 photos (a cap of 3 or 4 leaves some out), b1 with 2, b2 with none
    embedded; 5 users with reviews spread over them, one review's photos not embedded at all."""
    reviews, images, embedded = [], [], []
    photos_of = {"b0": [f"p0{i}" for i in range(6)], "b1": ["p10", "p11"], "b2": ["p20"]}
    for n, (user, business, pics) in enumerate([
            ("u0", "b0", ["p00", "p05"]), ("u0", "b1", ["p10"]), ("u1", "b0", ["p01", "p02"]), ("u1", "b2", ["p20"]),
            ("u2", "b0", ["p03"]), ("u2", "b1", ["p11", "p10"]), ("u3", "b0", ["p04"]), ("u4", "b1", ["p99"])]):
        review = f"r{n}"
        reviews.append({"review_id": review, "user_id": user, "business_id": business, "split": "train",
                        "pic_ids": pics, "time_ms": 1000 + n if n % 3 else None, "history": None})
        for pic in pics:
            images.append({"image_id": pic, "review_id": review, "user_id": user, "business_id": business,
                           "uri": f"/{pic}"})
    for business, pics in photos_of.items():
        embedded += [p for p in pics if business != "b2"]
    image_emb = pa.table({"id": embedded, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(rng.normal(size=len(embedded) * dim).astype(np.float32)), dim)})
    texts = [f"review:r{n}" for n in range(len(reviews))]
    text_emb = pa.table({"id": texts, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(rng.normal(size=len(texts) * dim).astype(np.float32)), dim)})
    return pa.Table.from_pylist(reviews), pa.Table.from_pylist(images), image_emb, text_emb


def test_examples_from_the_feature_rows_are_the_in_memory_examples_and_score_the_same():
    """What train_dpp's Ray Data tasks build from the feature tables (feature_examples, moved as Arrow rows and
    batched by arrow_batch) equals what build_selection_data builds from the raw tables, tensor for tensor, with the
    table's cap above the job's and equal to it (a user's photo outside the stored ground set is fetched by id)."""
    from showcase_core import features as F
    from showcase_core.selection.data import (arrow_batch, batch_tensors, build_selection_data, embedding_matrix,
                                              feature_examples)
    from showcase_core.selection.training import PickScores, evaluate_picks, pick_positions, select

    reviews, images, image_emb, text_emb = raw_world(np.random.default_rng(5))
    vector_of = dict(zip(*embedding_matrix(image_emb)))
    for table_cap, max_ground in ((4, 3), (3, 3), (128, 128)):
        asked = []

        def vectors_of(ids):
            asked.extend(ids)
            return {i: vector_of[i] for i in ids if i in vector_of}

        users, businesses = F.rows_from_tables(reviews, images, image_emb, text_emb, max_ground_set=table_cap)
        examples = feature_examples(reviews, users, businesses, 4, max_ground, vectors_of)
        assert examples.column("reason").to_pylist() == [None] * 3 + ["no_photos"] + [None] * 3 + \
            ["no_embedded_photo"]
        left_out = sorted(set(f"p0{i}" for i in range(6)) - set(businesses["b0"]["image_ids"]))
        assert sorted(asked) == left_out and len(left_out) == max(0, 6 - table_cap)  # fetched: only those
        data = build_selection_data(reviews, images, image_emb, text_emb, ("train",), max_ground)
        ex = data.splits["train"]
        assert data.skipped == {"train": 2} and len(ex) == 6
        usable = examples.filter(pa.compute.is_null(examples.column("reason")))
        assert usable.column("user_id").to_pylist() == ex.user_ids
        streamed, held = arrow_batch(usable), batch_tensors(data, ex, np.arange(len(ex)))
        for name in ("photos", "mask", "y", "y_mask", "profile_img", "profile_text"):
            assert torch.equal(getattr(streamed, name), getattr(held, name)), (table_cap, name)

        torch.manual_seed(0)
        model = DPPKernel(4, "img+text")
        scores = PickScores(3)
        for start in range(0, len(usable), 4):  # batches of 4 and 2
            batch = arrow_batch(usable.slice(start, 4))
            scores.add(batch, pick_positions(model, batch, 3))
        want = evaluate_picks(data, ex, select(model, data, ex, 3), 3)
        assert scores.scores() == pytest.approx(want, abs=1e-12)
