"""A synthetic world in the real Gest layout, with the signals the models are meant to find.

``make_world(out_dir, size, seed)`` writes::

    OUT/filter_all_t.json     Gest-s2: {"train": [...], "val": [...], "test": [...]}
    OUT/image_review_all.json Gest-raw JSON lines (pics as {"url": [...]}) of the same reviews
    OUT/images/<pic_id>.jpg   procedurally drawn photos
    OUT/sentences.jsonl       sidecar: each review sentence, the photos it describes and the entities it names
    OUT/photos.jsonl          sidecar: the entities each photo shows
    OUT/owner_photos.jsonl    each business's own photos (business_id, pic_id, entities), also under images/
    OUT/businesses.jsonl      each business's place (business_id, latitude, longitude)
    OUT/world.json            entities, businesses, users (taste, style), sizes, and the planted bad records

The signals:
- 40 entities (30 dishes in 6 cuisines, 10 ambience items), each with a distinct visual signature: a shape
  (8 kinds) x a texture (5 kinds) that no other entity shares, and its own two-colour palette. Photos show
  1-3 entities at random position and scale over a random background with noise.
- Businesses have a cuisine and a menu (dishes of that cuisine plus a few ambience items); each gets
  reviews from users drawn by taste, so a business collects photos from many users.
- Users have a lasting taste (weights over ~6 favourite entities), a personal writing style (opener, favourite
  adjectives, sentence templates, punctuation) and a personal photo style (the background of their photos: their
  usual table and lighting, jittered per photo). They photograph what they like: each photo's main entity is drawn
  from the business's menu weighted by the user's taste. Without the photo style a user's photos would be
  indistinguishable from other users' photos of the same dish (an oracle that knows the taste reaches under 4x
  random F1@3 at picking them).
- Each review has one sentence per photo naming the photo's entities, in the user's style, mixed with generic
  filler sentences; ``sentences.jsonl`` records which sentence describes which photo (fillers describe none).
- Planted low-quality modalities (``low_quality`` of the businesses each, default 10%; disjoint; listed in
  world.json's ``low_quality``): ``noise_photos`` businesses' review photos show nothing (random background and
  noise, no entity, no photographer's style), ``filler_reviews`` businesses' reviews are generic filler sentences
  only. Their ids are drawn from a stream of their own, so every other draw of the world is the same with or
  without them; the sidecars stay true (a noise photo shows no entity and no sentence describes it).

- Place and popularity (sizes with ``areas`` / ``popularity_sigma``; ``large``): users and businesses live in one
  of several areas, a user outside the business's area is drawn at ``AREA_LEAK`` of the weight
  (``reviewer_weights``), and an area's businesses take their ambience from ``AREA_AMBIENCE`` items of its own, so
  the photos show the place, and so does one more owner photo, of the room (its ambience items); a business's
  review count is scaled by its lognormal popularity. Both come from streams of their own, so a size without them
  draws exactly what it drew before they existed.

- Business places: every business publishes its coordinates (``businesses.jsonl``: business_id, latitude,
  longitude, as Google Local's and Yelp's business metadata do): an area's businesses lie within about
  ``BUSINESS_SPREAD_KM`` of its centre, and the area centres are spread over ``CITY_SPREAD_KM`` around
  ``CITY_CENTRE``. A world without areas is one area. Drawn from a stream of their own.

- Owner photos: every business publishes ``OWNER_PHOTOS`` photos of dishes of its menu on a neutral background,
  apart from the reviews (what a cold business is recommended from).

The same seed gives the same bytes: every photo is drawn from its own generator seeded by (seed, photo index).
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CUISINES = {
    "japanese": ["ramen", "sushi", "tempura", "gyoza", "matcha latte"],
    "mexican": ["tacos", "burrito", "nachos", "guacamole", "churros"],
    "italian": ["pizza", "pasta", "tiramisu", "risotto", "bruschetta"],
    "cafe": ["croissant", "cappuccino", "pancakes", "waffles", "avocado toast"],
    "american": ["burger", "fries", "ribs", "milkshake", "hot dog"],
    "indian": ["curry", "naan", "samosa", "biryani", "mango lassi"],
}
AMBIENCE = ["patio", "neon sign", "fireplace", "bar counter", "wall mural",
            "window view", "string lights", "bookshelf", "aquarium", "open kitchen"]
SHAPES = ["circle", "square", "triangle", "diamond", "star", "ring", "cross", "hexagon"]
TEXTURES = ["solid", "stripes", "dots", "checker", "grid"]

ADJECTIVES = ["amazing", "crispy", "delightful", "solid", "heavenly", "decent", "fresh", "rich",
              "lovely", "perfect", "tasty", "gorgeous", "bold", "cozy", "generous", "silky",
              "smoky", "zesty", "fluffy", "tender", "spicy", "warm", "bright", "unreal"]
OPENERS = ["", "Honestly, ", "Wow, ", "So ", "Okay so ", "Gotta say, ", "Well, ", "Seriously, "]
TEMPLATES = [
    "the {adj} {ent} was {adj2}",
    "you have to try the {ent}, so {adj}",
    "{ent} here is {adj}",
    "loved the {adj} {ent}",
    "their {ent} is {adj} and {adj2}",
    "the {ent} looked {adj} and tasted {adj2}",
    "I keep coming back for the {adj} {ent}",
    "best {ent} around, {adj}",
]
FILLERS = ["food is great", "service was quick", "will come back", "parking was easy",
           "staff were friendly", "prices are fair", "great place overall", "it was busy tonight",
           "came here with friends", "highly recommend", "the wait was short", "nice spot"]

MENU_EXTRA = (2, 4)  # dishes from other cuisines on a menu
AFFINITY_POWER = 1.0  # reviewers are drawn by affinity**power (+ REVIEWER_MIX): how alike a business's reviewers are
REVIEWER_MIX = 0.05
PHOTO_NOISE = 0.01  # added to taste when picking what to photograph: lower = users photograph their taste more

OWNER_PHOTOS = 3  # per business: dishes of its menu
OWNER_BACKGROUND = (232, 232, 226)  # a neutral, light backdrop

SIZES = {
    # businesses, users, reviews per business (low, high), photo side in pixels
    "tiny": dict(businesses=8, users=24, reviews=(5, 8), side=64),
    "mini": dict(businesses=80, users=260, reviews=(9, 14), side=96),
    # large also has a place and a popularity: 30 areas (a reviewer comes from the business's own area, or from
    # elsewhere at AREA_LEAK of the weight), each with its own 3 ambience items, and a lognormal popularity (σ 0.5)
    # that scales a business's review count (at least 3)
    "large": dict(businesses=3300, users=4500, reviews=(11, 15), side=96, areas=30, popularity_sigma=0.5,
                  min_reviews=3),
}
AREA_LEAK = 0.02  # a reviewer's draw weight for a business outside their area, against 1 inside
AREA_AMBIENCE = 3  # ambience items an area's businesses draw from (a business has 2-3 of them)
CITY_CENTRE = (40.7128, -74.0060)  # latitude, longitude in degrees
CITY_SPREAD_KM = 20.0  # area centres uniform within this many km of the city centre, north-south and east-west
BUSINESS_SPREAD_KM = 1.0  # sd of a business's distance from its area's centre, per axis
KM_PER_DEGREE = 111.2  # of latitude (of longitude: times cos(latitude))


@dataclass(frozen=True)
class Entity:
    index: int
    name: str
    kind: str  # dish | ambience
    cuisine: str | None
    shape: str
    texture: str
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def entities() -> list[Entity]:
    names = [(d, "dish", c) for c, dishes in CUISINES.items() for d in dishes]
    names += [(a, "ambience", None) for a in AMBIENCE]
    out = []
    for i, (name, kind, cuisine) in enumerate(names):
        hue = (i * 0.6180339887) % 1.0
        out.append(Entity(i, name, kind, cuisine, SHAPES[i % 8], TEXTURES[(i // 8) % 5],
                          _hsv_to_rgb(hue, 0.85, 0.95), _hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35)))
    return out


ENTITIES = entities()
ENTITY_BY_NAME = {e.name: e for e in ENTITIES}


# -- drawing ----------------------------------------------------------------------------------------

def _shape_mask(shape: str, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    s, c = size - 1, size / 2
    if shape == "circle":
        d.ellipse([0, 0, s, s], fill=255)
    elif shape == "square":
        d.rectangle([s * 0.1, s * 0.1, s * 0.9, s * 0.9], fill=255)
    elif shape == "triangle":
        d.polygon([(c, 0), (s, s), (0, s)], fill=255)
    elif shape == "diamond":
        d.polygon([(c, 0), (s, c), (c, s), (0, c)], fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            r = c if k % 2 == 0 else c * 0.45
            a = np.pi / 2 + k * np.pi / 5
            pts.append((c + r * np.cos(a), c - r * np.sin(a)))
        d.polygon(pts, fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, s, s], fill=255)
        d.ellipse([s * 0.3, s * 0.3, s * 0.7, s * 0.7], fill=0)
    elif shape == "cross":
        d.rectangle([s * 0.35, 0, s * 0.65, s], fill=255)
        d.rectangle([0, s * 0.35, s, s * 0.65], fill=255)
    elif shape == "hexagon":
        d.polygon([(c + c * np.cos(a), c + c * np.sin(a)) for a in np.arange(6) * np.pi / 3], fill=255)
    return mask


def _texture(entity: Entity, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    period = max(4, size // 5)
    if entity.texture == "solid":
        on = np.ones((size, size), bool)
    elif entity.texture == "stripes":
        on = ((x + y) // max(2, period // 2)) % 2 == 0
    elif entity.texture == "dots":
        on = ~(((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2 < (period / 3.2) ** 2)
    elif entity.texture == "checker":
        on = ((x // period) + (y // period)) % 2 == 0
    else:  # grid
        on = ~((x % period < max(1, period // 4)) | (y % period < max(1, period // 4)))
    img = np.empty((size, size, 3), np.uint8)
    img[on] = entity.primary
    img[~on] = entity.secondary
    return img


def draw_photo(entity_names: list[str], side: int, rng: np.random.Generator,
               background: tuple[int, int, int] | None = None) -> Image.Image:
    """A photo of the named entities over a background (the photographer's usual one, jittered) with noise."""
    if background is None:
        bg = rng.integers(60, 200, size=3)
    else:
        bg = np.clip(np.asarray(background) + rng.normal(0, 10, size=3), 0, 255)
    base = np.clip(bg + rng.normal(0, 18, size=(side, side, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    for name in reversed(entity_names):  # the main entity (first) is drawn last, on top
        e = ENTITY_BY_NAME[name]
        size = int(side * rng.uniform(0.35, 0.6))
        x0, y0 = rng.integers(0, side - size, size=2)
        img.paste(Image.fromarray(_texture(e, size), "RGB"), (int(x0), int(y0)), _shape_mask(e.shape, size))
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, 8, size=(side, side, 3)).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def photo_jpeg(seed: int, photo_index: int, entity_names: list[str], side: int,
               background: tuple[int, int, int] | None = None) -> bytes:
    rng = np.random.default_rng([seed, 1, photo_index])
    buf = io.BytesIO()
    draw_photo(entity_names, side, rng, background).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _render_batch(args) -> int:
    seed, side, images_dir, batch = args
    for photo_index, pic_id, names, background in batch:
        with open(os.path.join(images_dir, f"{pic_id}.jpg"), "wb") as f:
            f.write(photo_jpeg(seed, photo_index, names, side, background))
    return len(batch)


# -- the world --------------------------------------------------------------------------------------

def _style(rng: np.random.Generator) -> dict:
    return {
        "opener": str(rng.choice(OPENERS)),
        "adjectives": [str(a) for a in rng.choice(ADJECTIVES, size=3, replace=False)],
        "templates": [int(t) for t in rng.choice(len(TEMPLATES), size=2, replace=False)],
        "exclaim": bool(rng.random() < 0.5),
        "lowercase": bool(rng.random() < 0.3),
        # the photographer's habits: their usual table/lighting, i.e. the background of their photos
        "photo_background": [int(c) for c in rng.integers(40, 216, size=3)],
    }


def _sentence(style: dict, names: list[str], rng: np.random.Generator) -> str:
    adj, adj2 = rng.choice(style["adjectives"], size=2, replace=False)
    ent = names[0] if len(names) == 1 else " and ".join(names[:2])
    text = TEMPLATES[int(rng.choice(style["templates"]))].format(adj=adj, adj2=adj2, ent=ent)
    return text


def _finish(style: dict, sentences: list[str]) -> str:
    end = "!" if style["exclaim"] else "."
    out = []
    for i, s in enumerate(sentences):
        s = (style["opener"] + s) if i == 0 else s
        s = s[0].upper() + s[1:]
        out.append(s + end)
    text = " ".join(out)
    return text.lower() if style["lowercase"] else text


def plant_low_quality(businesses: list[dict], share: float, seed: int) -> dict[str, list[str]]:
    """Disjoint sets of ``round(share * businesses)`` ids each: noise photos, filler-only reviews."""
    if not 0 <= share <= 0.5:
        raise ValueError(f"low_quality must be within [0, 0.5] (a share of the businesses per kind), got {share}")
    n = int(round(share * len(businesses)))
    order = np.random.default_rng([seed, 2]).permutation(len(businesses))
    ids = [businesses[i]["business_id"] for i in order]
    return {"noise_photos": sorted(ids[:n]), "filler_reviews": sorted(ids[n:2 * n])}


def reviewer_weights(taste: np.ndarray, menus: np.ndarray, user_area: np.ndarray,
                     business_area: np.ndarray) -> np.ndarray:
    """[users, businesses]: the weight a business draws each user as a reviewer by (normalised per business):
    (taste · menu + 0.02)^AFFINITY_POWER + REVIEWER_MIX, times AREA_LEAK where the user lives in another area."""
    affinity = (taste @ menus.T + 0.02) ** AFFINITY_POWER + REVIEWER_MIX
    return affinity * np.where(user_area[:, None] == business_area[None, :], 1.0, AREA_LEAK)


def build_world(size: str, seed: int, low_quality: float = 0.1) -> dict:
    """Everything about the world except the photo pixels, deterministically from the seed."""
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r} (choose from {', '.join(SIZES)})")
    cfg = SIZES[size]
    rng = np.random.default_rng([seed, 0])
    n_ent = len(ENTITIES)
    cuisines = list(CUISINES)

    areas = cfg.get("areas", 1)
    area_rng = np.random.default_rng([seed, 6])  # a stream of its own: a world without areas draws the same
    business_area = area_rng.integers(0, areas, cfg["businesses"])
    area_ambience = [[str(a) for a in area_rng.choice(AMBIENCE, size=AREA_AMBIENCE, replace=False)]
                     for _ in range(areas)] if areas > 1 else [AMBIENCE]
    popularity = np.ones(cfg["businesses"])
    if cfg.get("popularity_sigma"):
        popularity = np.random.default_rng([seed, 5]).lognormal(0.0, cfg["popularity_sigma"], cfg["businesses"])
        popularity /= popularity.mean()

    businesses = []
    place_rng = np.random.default_rng([seed, 7])  # a stream of its own: every other draw is as before places
    centres = place_rng.uniform(-CITY_SPREAD_KM, CITY_SPREAD_KM, (areas, 2)) if areas > 1 else np.zeros((1, 2))
    offsets_km = centres[business_area] + place_rng.normal(0.0, BUSINESS_SPREAD_KM, (cfg["businesses"], 2))
    latitude = CITY_CENTRE[0] + offsets_km[:, 0] / KM_PER_DEGREE
    longitude = CITY_CENTRE[1] + offsets_km[:, 1] / (KM_PER_DEGREE * np.cos(np.deg2rad(CITY_CENTRE[0])))
    for b in range(cfg["businesses"]):
        cuisine = cuisines[b % len(cuisines)] if b < len(cuisines) else str(rng.choice(cuisines))
        dishes = [str(d) for d in rng.choice(CUISINES[cuisine], size=int(rng.integers(4, 6)), replace=False)]
        # a couple of dishes from other cuisines (fusion menus), so one menu serves several tastes
        others = [d for c, ds in CUISINES.items() if c != cuisine for d in ds]
        dishes += [str(d) for d in rng.choice(others, size=int(rng.integers(MENU_EXTRA[0], MENU_EXTRA[1] + 1)), replace=False)]
        pool = area_ambience[business_area[b]]
        amb = [str(a) for a in rng.choice(pool, size=min(int(rng.integers(2, 4)), len(pool)), replace=False)]
        businesses.append({"business_id": f"b{b:05d}", "cuisine": cuisine, "menu": dishes + amb,
                           "area": int(business_area[b]), "popularity": round(float(popularity[b]), 4),
                           "latitude": round(float(latitude[b]), 6), "longitude": round(float(longitude[b]), 6)})

    users = []
    taste_matrix = np.zeros((cfg["users"], n_ent))
    for u in range(cfg["users"]):
        favourite_cuisines = rng.choice(cuisines, size=2, replace=False)
        pool = [ENTITY_BY_NAME[d].index for c in favourite_cuisines for d in CUISINES[c]]
        favs = list(rng.choice(pool, size=4, replace=False)) + list(
            rng.choice([ENTITY_BY_NAME[a].index for a in AMBIENCE], size=2, replace=False))
        weights = rng.dirichlet(np.ones(len(favs)) * 2.0)
        taste_matrix[u, favs] = weights
        users.append({
            "user_id": f"u{u:05d}",
            "favourites": [ENTITIES[i].name for i in favs],
            "taste": {ENTITIES[i].name: round(float(w), 4) for i, w in zip(favs, weights)},
            "style": _style(rng),
        })
    user_area = area_rng.integers(0, areas, cfg["users"])
    for user, area in zip(users, user_area):
        user["area"] = int(area)

    menus = np.zeros((len(businesses), n_ent))
    for bi, b in enumerate(businesses):
        menus[bi, [ENTITY_BY_NAME[m].index for m in b["menu"]]] = 1.0
    draw_weight = reviewer_weights(taste_matrix, menus, user_area, business_area)  # users x businesses
    planted = plant_low_quality(businesses, low_quality, seed)
    noise, filler = set(planted["noise_photos"]), set(planted["filler_reviews"])
    filler_rng = np.random.default_rng([seed, 3])

    reviews, photos = [], []
    for bi, b in enumerate(businesses):
        n_rev = int(rng.integers(cfg["reviews"][0], cfg["reviews"][1] + 1))
        n_rev = max(cfg.get("min_reviews", 1), int(round(n_rev * popularity[bi])))
        p = draw_weight[:, bi]
        reviewers = rng.choice(len(users), size=min(n_rev, len(users)), replace=False, p=p / p.sum())
        menu_idx = np.flatnonzero(menus[bi])
        for u in reviewers:
            user = users[u]
            weights = taste_matrix[u, menu_idx] + PHOTO_NOISE
            pics, sentences = [], []
            for _ in range(int(rng.choice([1, 2, 2, 3, 3, 4]))):
                main = ENTITIES[int(rng.choice(menu_idx, p=weights / weights.sum()))].name
                others = [ENTITIES[int(i)].name for i in rng.choice(menu_idx, size=int(rng.integers(0, 3)))]
                shown = [main] + [o for o in dict.fromkeys(others) if o != main]
                pic_id = f"p{len(photos):07d}"
                photos.append({"pic_id": pic_id, "index": len(photos), "entities": shown[:3],
                               "background": user["style"]["photo_background"]})
                pics.append(pic_id)
                named = shown[:2] if len(shown) > 1 and rng.random() < 0.3 else [main]
                sentences.append({"text": _sentence(user["style"], named, rng), "entities": named})
            # a sentence describes every photo of its review whose main entity it names
            main_of = {p["pic_id"]: p["entities"][0] for p in photos[-len(pics):]}
            for s in sentences:
                s["pic_ids"] = [pid for pid, m in main_of.items() if m in s["entities"]]
            if b["business_id"] in noise:  # the photos show nothing: no entity, a random background
                for p in photos[-len(pics):]:
                    p["entities"], p["background"] = [], None
                for s in sentences:
                    s["pic_ids"] = []
            if b["business_id"] in filler:  # generic words only
                sentences = [{"text": str(filler_rng.choice(FILLERS)), "pic_ids": [], "entities": []}
                             for _ in sentences]
            for _ in range(int(rng.integers(1, 3))):
                at = int(rng.integers(0, len(sentences) + 1))
                sentences.insert(at, {"text": str(rng.choice(FILLERS)), "pic_ids": [], "entities": []})
            liked = float(sum(user["taste"].get(ENTITY_BY_NAME[e].name, 0) for e in main_of.values()))
            rating = int(np.clip(round(3 + 4 * liked + rng.normal(0, 0.5)), 1, 5))
            reviews.append({
                "user_id": user["user_id"], "business_id": b["business_id"], "rating": rating,
                "pics": pics, "sentences": sentences,
                "split": str(rng.choice(["train", "val", "test"], p=[0.8, 0.1, 0.1])),
            })
    owner_rng = np.random.default_rng([seed, 4])
    owner_photos = []
    for bi, b in enumerate(businesses):
        dishes = [m for m in b["menu"] if ENTITY_BY_NAME[m].kind == "dish"]
        shown = [[str(d)] for d in owner_rng.choice(dishes, size=min(OWNER_PHOTOS, len(dishes)), replace=False)]
        if areas > 1:  # where the place matters, the owner also shows the room: its ambience items
            shown.append([m for m in b["menu"] if ENTITY_BY_NAME[m].kind == "ambience"][:3])
        for k, entities in enumerate(shown):
            owner_photos.append({"pic_id": f"o{bi:05d}-{k}", "business_id": b["business_id"], "entities": entities,
                                 "index": len(photos) + len(owner_photos), "background": list(OWNER_BACKGROUND)})
    for r in reviews:
        r["review_text"] = _finish(users[int(r["user_id"][1:])]["style"], [s["text"] for s in r["sentences"]])
        # the sidecar keeps the sentences exactly as they appear in review_text
        for s, final in zip(r["sentences"], _split_sentences(r["review_text"], len(r["sentences"]))):
            s["text"] = final
    return {"size": size, "seed": seed, "side": cfg["side"], "businesses": businesses, "users": users,
            "reviews": reviews, "photos": photos, "owner_photos": owner_photos, "low_quality": planted}


def _split_sentences(text: str, n: int) -> list[str]:
    """Split a review produced by _finish back into its n sentences (they end in '.' or '!')."""
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".!" and (i + 1 == len(text) or text[i + 1] == " "):
            out.append(text[start:i + 1].strip())
            start = i + 1
    assert len(out) == n, (text, n)
    return out


def planted_bad_records(world: dict) -> tuple[list[dict], list[dict]]:
    """A few records that validation must quarantine, appended to the s2 test split (and the raw file).

    Returns (records, expectations); each expectation names the reason code ingest must give.
    """
    good = world["reviews"]
    first, second = good[0], good[1]
    records = [
        ({"business_id": "b00000", "rating": 4, "review_text": "no user here.", "pics": [first["pics"][0]]},
         "missing_field"),
        ({"user_id": "u00000", "business_id": "bXbad1", "rating": "five", "review_text": "typed wrong.",
          "pics": [first["pics"][0]]}, "wrong_type"),
        ({"user_id": "u00000", "business_id": "bXbad2", "rating": 4, "review_text": "   ", "pics": [first["pics"][0]]},
         "empty_text"),
        ({"user_id": "u00000", "business_id": "bXbad3", "rating": 4, "review_text": "no photos.", "pics": []},
         "no_photos"),
        ({"user_id": second["user_id"], "business_id": second["business_id"], "rating": 3,
          "review_text": "the same review again.", "pics": second["pics"]}, "duplicate_review"),
        ({"user_id": "u00000", "business_id": "bXbad4", "rating": 4, "review_text": "photo never uploaded.",
          "pics": ["pmissing0"]}, "all_photos_missing"),
    ]
    return [r for r, _ in records], [{"reason": reason} for _, reason in records]


def s2_record(review: dict, history: list[list[str]]) -> dict:
    return {"user_id": review["user_id"], "business_id": review["business_id"], "rating": review["rating"],
            "review_text": review["review_text"], "history_reviews": history, "pics": review["pics"]}


def make_world(out_dir: str, size: str = "mini", seed: int = 0, plant_bad: bool = True,
               workers: int | None = None, progress=None, low_quality: float = 0.1) -> dict:
    """Write the world to ``out_dir`` (local). Returns a summary with the counts ingest should find."""
    world = build_world(size, seed, low_quality)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    key = lambda r: f"{r['user_id']}_{r['business_id']}"  # noqa: E731

    train_by_user: dict[str, list] = {}
    for r in world["reviews"]:
        if r["split"] == "train":
            train_by_user.setdefault(r["user_id"], []).append(r)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for r in world["reviews"]:
        history = [[key(h), h["review_text"]] for h in train_by_user.get(r["user_id"], []) if h is not r][:10]
        splits[r["split"]].append(s2_record(r, history))

    bad, expectations = planted_bad_records(world) if plant_bad else ([], [])
    splits["test"].extend(bad)  # last in file order, so the planted duplicate follows its original
    with open(os.path.join(out_dir, "filter_all_t.json"), "w") as f:
        json.dump(splits, f)

    with open(os.path.join(out_dir, "image_review_all.json"), "w") as f:
        for r in world["reviews"] + [dict(b) for b in bad]:
            row = {k: r[k] for k in ("business_id", "user_id", "rating", "review_text") if k in r}
            row["pics"] = [{"url": [f"https://photos.synthetic.invalid/p/{p}=w150-h150-k-no-p"]}
                           for p in r.get("pics", [])]
            f.write(json.dumps(row) + "\n")
        if plant_bad:
            f.write('{"business_id": "b00001", "user_id": "u00001", "rating": 5, "review_text": "cut off\n')

    with open(os.path.join(out_dir, "sentences.jsonl"), "w") as f:
        for r in world["reviews"]:
            for i, s in enumerate(r["sentences"]):
                f.write(json.dumps({"review_id": key(r), "sentence_index": i, "text": s["text"],
                                    "pic_ids": s["pic_ids"], "entities": s["entities"]}) + "\n")
    with open(os.path.join(out_dir, "photos.jsonl"), "w") as f:
        for p in world["photos"]:
            f.write(json.dumps({"pic_id": p["pic_id"], "entities": p["entities"]}) + "\n")

    with open(os.path.join(out_dir, "owner_photos.jsonl"), "w") as f:
        for p in world["owner_photos"]:
            f.write(json.dumps({"business_id": p["business_id"], "pic_id": p["pic_id"],
                                "entities": p["entities"]}) + "\n")

    with open(os.path.join(out_dir, "businesses.jsonl"), "w") as f:
        for b in world["businesses"]:
            f.write(json.dumps({k: b[k] for k in ("business_id", "latitude", "longitude")}) + "\n")

    jobs = [(p["index"], p["pic_id"], p["entities"], tuple(p["background"]) if p["background"] else None)
            for p in world["photos"] + world["owner_photos"]]
    batches = [jobs[i:i + 500] for i in range(0, len(jobs), 500)]
    images_dir = os.path.join(out_dir, "images")
    args = [(seed, world["side"], images_dir, b) for b in batches]
    workers = workers or min(len(batches), os.cpu_count() or 1)
    done = 0
    if workers > 1 and len(batches) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_render_batch, args):
                done += n
                if progress:
                    progress(done, len(jobs))
    else:
        for a in args:
            done += _render_batch(a)
            if progress:
                progress(done, len(jobs))

    summary = {
        "size": size, "seed": seed,
        "reviews": len(world["reviews"]), "photos": len(world["photos"]), "owner_photos": len(world["owner_photos"]),
        "users": len({r["user_id"] for r in world["reviews"]}),
        "businesses": len({r["business_id"] for r in world["reviews"]}),
        "splits": {k: len([r for r in world["reviews"] if r["split"] == k]) for k in splits},
        "planted_bad": expectations,
        "low_quality": {kind: len(ids) for kind, ids in world["low_quality"].items()},
    }
    meta = {
        "summary": summary,
        "entities": [e.__dict__ for e in ENTITIES],
        "businesses": world["businesses"],
        "users": world["users"],
        "low_quality": world["low_quality"],
    }
    with open(os.path.join(out_dir, "world.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return summary
