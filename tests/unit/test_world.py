import hashlib
import json
import os
from collections import Counter

import numpy as np
from PIL import Image

from showcase_core.data.world import ENTITIES, FILLERS, build_world, make_world


def tree_digest(root: str) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    make_world(a, "tiny", seed=3, workers=2)
    make_world(b, "tiny", seed=3, workers=1)  # parallel or not, the same bytes
    make_world(c, "tiny", seed=4)
    assert tree_digest(a) == tree_digest(b)
    assert len(tree_digest(a)) > 100
    assert tree_digest(a)["filter_all_t.json"] != tree_digest(c)["filter_all_t.json"]


def test_entities_have_distinct_visual_signatures():
    assert len(ENTITIES) == 40
    assert len({(e.shape, e.texture) for e in ENTITIES}) == 40
    assert len({e.primary for e in ENTITIES}) == 40


def test_users_photograph_what_they_like():
    world = build_world("mini", seed=0, low_quality=0.0)
    favourites = {u["user_id"]: set(u["favourites"]) for u in world["users"]}
    photo_main = {p["pic_id"]: p["entities"][0] for p in world["photos"]}
    menu = {b["business_id"]: b["menu"] for b in world["businesses"]}
    hits = total = baseline = 0.0
    for r in world["reviews"]:
        fav = favourites[r["user_id"]]
        for pic in r["pics"]:
            total += 1
            hits += photo_main[pic] in fav
            # what a user without taste would hit: a uniform pick from the same menu
            baseline += np.mean([m in fav for m in menu[r["business_id"]]])
    share, chance = hits / total, baseline / total
    assert share > 0.6, share
    assert share > chance + 0.2, (share, chance)


def test_mini_world_shape_matches_the_issue():
    world = build_world("mini", seed=0, low_quality=0.0)
    per_business = Counter()
    photo_of = {p["pic_id"] for p in world["photos"]}
    for r in world["reviews"]:
        per_business[r["business_id"]] += len(r["pics"])
        assert set(r["pics"]) <= photo_of
    avg = np.mean(list(per_business.values()))
    assert 20 <= avg <= 40, avg
    assert 1000 < len(world["photos"]) < 10000
    assert all(1 <= len(p["entities"]) <= 3 for p in world["photos"])
    users_per_business = Counter(r["business_id"] for r in world["reviews"])
    assert min(users_per_business.values()) >= 5  # photos from many users


def test_sidecar_labels_which_sentence_describes_which_photo(tmp_path):
    out = str(tmp_path / "w")
    make_world(out, "tiny", seed=1, low_quality=0.0)
    with open(os.path.join(out, "filter_all_t.json")) as f:
        splits = json.load(f)
    texts: dict[str, dict] = {}
    for records in splits.values():
        for r in records:
            if "user_id" in r:  # the planted duplicate comes last; the first record is the world's
                texts.setdefault(f"{r['user_id']}_{r['business_id']}", r)
    photos = {json.loads(line)["pic_id"]: json.loads(line)["entities"] for line in open(os.path.join(out, "photos.jsonl"))}
    by_review: dict[str, list] = {}
    for line in open(os.path.join(out, "sentences.jsonl")):
        s = json.loads(line)
        by_review.setdefault(s["review_id"], []).append(s)
    assert by_review
    fillers = 0
    for review_id, sentences in by_review.items():
        record = texts[review_id]
        assert " ".join(s["text"] for s in sentences) == record["review_text"]
        described = {p for s in sentences for p in s["pic_ids"]}
        assert described == set(record["pics"])  # every photo has a sentence about it
        for s in sentences:
            if not s["pic_ids"]:
                fillers += 1
                assert s["entities"] == []
            for pic in s["pic_ids"]:
                assert photos[pic][0] in s["entities"]  # it names what the photo mainly shows
                assert photos[pic][0] in s["text"].lower()
    assert fillers >= len(by_review)  # at least one generic filler per review


def test_photos_are_jpegs_of_the_configured_size(tmp_path):
    out = str(tmp_path / "w")
    summary = make_world(out, "tiny", seed=0)
    names = os.listdir(os.path.join(out, "images"))
    assert len(names) == summary["photos"] + summary["owner_photos"]
    assert summary["owner_photos"] == 3 * 8  # three per business
    with Image.open(os.path.join(out, "images", sorted(names)[0])) as im:
        assert im.format == "JPEG" and im.size == (64, 64)


def test_planted_low_quality_businesses_have_uninformative_photos_or_words(tmp_path):
    plain, planted = build_world("mini", seed=0, low_quality=0.0), build_world("mini", seed=0)
    noise, filler = (set(planted["low_quality"][k]) for k in ("noise_photos", "filler_reviews"))
    assert len(noise) == len(filler) == 8 and not noise & filler  # 10% of 80 each, disjoint
    assert plain["low_quality"] == {"noise_photos": [], "filler_reviews": []}
    business_of = {p: r["business_id"] for r in planted["reviews"] for p in r["pics"]}
    for before, after in zip(plain["photos"], planted["photos"]):
        if business_of[after["pic_id"]] in noise:
            assert after["entities"] == [] and after["background"] is None
        else:  # every other draw of the world is unchanged
            assert after == before
    for before, after in zip(plain["reviews"], planted["reviews"]):
        assert (after["user_id"], after["business_id"], after["rating"]) == \
               (before["user_id"], before["business_id"], before["rating"])
        if after["business_id"] in filler:
            assert all(s["text"].rstrip(".!").lower().endswith(tuple(FILLERS)) and not s["pic_ids"]
                       for s in after["sentences"])
            assert not any(e.name in after["review_text"].lower() for e in ENTITIES)
        elif after["business_id"] in noise:
            assert after["review_text"] == before["review_text"]
            assert all(not s["pic_ids"] for s in after["sentences"])
        else:
            assert after == before
    out = str(tmp_path / "w")
    summary = make_world(out, "tiny", seed=0)
    with open(os.path.join(out, "world.json")) as f:
        recorded = json.load(f)["low_quality"]
    assert summary["low_quality"] == {"noise_photos": 1, "filler_reviews": 1}
    assert recorded == build_world("tiny", seed=0)["low_quality"]


def test_owner_photos_show_dishes_of_the_menu_apart_from_the_reviews(tmp_path):
    out = str(tmp_path / "w")
    make_world(out, "tiny", seed=0)
    world = build_world("tiny", seed=0)
    menus = {b["business_id"]: set(b["menu"]) for b in world["businesses"]}
    with open(os.path.join(out, "owner_photos.jsonl")) as f:
        owners = [json.loads(line) for line in f]
    review_photos = {p for r in world["reviews"] for p in r["pics"]}
    assert len(owners) == 24 and len({o["pic_id"] for o in owners}) == 24
    for o in owners:
        assert o["pic_id"] not in review_photos and set(o["entities"]) <= menus[o["business_id"]]
        assert os.path.exists(os.path.join(out, "images", o["pic_id"] + ".jpg"))


def test_every_business_publishes_its_place_in_the_city(tmp_path):
    from showcase_core.data import world as world_module

    out = str(tmp_path / "w")
    make_world(out, "tiny", seed=0)
    with open(os.path.join(out, "businesses.jsonl")) as f:
        places = [json.loads(line) for line in f]
    world = build_world("tiny", seed=0)
    assert places == [{k: b[k] for k in ("business_id", "latitude", "longitude")} for b in world["businesses"]]
    for p in places:  # one area: within a few sd (1 km) of the city centre
        km = np.subtract([p["latitude"], p["longitude"]], world_module.CITY_CENTRE) * [111.2, 111.2 * 0.758]
        assert np.hypot(*km) < 6, p


def test_areas_and_popularity_shape_who_reviews_what(monkeypatch):
    from scipy.stats import spearmanr

    from showcase_core.data import world as world_module

    monkeypatch.setitem(world_module.SIZES, "areas", dict(businesses=120, users=400, reviews=(9, 13), side=64,
                                                          areas=4, popularity_sigma=0.5, min_reviews=3))
    world = build_world("areas", seed=0, low_quality=0.0)
    area_of_user = {u["user_id"]: u["area"] for u in world["users"]}
    business = {b["business_id"]: b for b in world["businesses"]}
    assert {u["area"] for u in world["users"]} == {b["area"] for b in world["businesses"]} == {0, 1, 2, 3}
    at_home = np.mean([area_of_user[r["user_id"]] == business[r["business_id"]]["area"] for r in world["reviews"]])
    assert at_home > 0.85, at_home  # a reviewer from elsewhere weighs AREA_LEAK (0.02) of one from the area
    ambience = {name for name in world_module.AMBIENCE}
    for area in range(4):  # an area's businesses share its few ambience items, which the photos and menus show
        shown = {m for b in world["businesses"] if b["area"] == area for m in b["menu"] if m in ambience}
        assert 2 <= len(shown) <= world_module.AREA_AMBIENCE
    reviews = Counter(r["business_id"] for r in world["reviews"])
    counts = [reviews[b["business_id"]] for b in world["businesses"]]
    assert min(counts) >= 3
    assert spearmanr([b["popularity"] for b in world["businesses"]], counts).statistic > 0.7
    assert np.std(counts) / np.mean(counts) > 0.35  # a lognormal skew, not 9-13 reviews each
    places = {b["business_id"]: (b["latitude"], b["longitude"]) for b in world["businesses"]}
    centre = {area: np.mean([places[b["business_id"]] for b in world["businesses"] if b["area"] == area], 0)
              for area in range(4)}
    for b in world["businesses"]:  # within a few km of its area's centre (1 km sd per axis; centres ±20 km apart)
        nearest = min(range(4), key=lambda a: np.hypot(*(np.subtract(places[b["business_id"]], centre[a])
                                                         * [111.2, 111.2 * np.cos(np.deg2rad(40.7))])))
        assert nearest == b["area"] or np.hypot(*(np.subtract(centre[nearest], centre[b["area"]]) * 111.2)) < 6
    for b in world["businesses"]:  # the owner's last photo is of the room: the place shows without any review
        room = [p for p in world["owner_photos"] if p["business_id"] == b["business_id"]][-1]["entities"]
        assert room and set(room) == {m for m in b["menu"] if m in ambience}
