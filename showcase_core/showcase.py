"""The published showcases: the Delta tables, their reader, and the assembly of showcase rows.

ROOT/showcases/               Delta table partitioned by dt, rows with the SHOWCASES schema (showcase_core.data.schema)
ROOT/showcases_quarantine/    Delta table partitioned by dt: the candidate pairs that got no showcase, with a reason

Each date is committed once by one nightly run (application transaction ``showcases/dt=DATE``, version = the
publish generation, +1 per ``--force``). ``read_showcases(root, date=None)`` reads the newest date by default;
any engine that reads Delta (Spark, Trino, Athena, DuckDB, Polars) reads the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import tables as delta
from .data.schema import SHOWCASES
from .store import Store, StoreError

TABLE = "showcases"
QUARANTINE_TABLE = "showcases_quarantine"


def app_id(date: str, table: str = TABLE) -> str:
    """The application transaction id of one date's commit to a table."""
    return f"{table}/dt={date}"


def published_dates(store: Store, version: int | None = None) -> list[str]:
    """Every date with committed showcases (at ``version``, default the newest), oldest first; reads the log only."""
    if not delta.exists(store, TABLE):
        return []
    actions = pa.table(delta.open_table(store, TABLE, version).get_add_actions(flatten=True))
    return sorted(set(actions.column("partition.dt").to_pylist())) if actions.num_rows else []


def latest_date(store: Store) -> str:
    dates = published_dates(store)
    if not dates:
        raise StoreError(f"no showcases published under {store.root} yet (no table at {store.uri(TABLE)})")
    return dates[-1]


def publication(store: Store, date: str) -> dict:
    """{date, run_id, generation, version} of the run that published ``date``; StoreError if none did."""
    generation = delta.open_table(store, TABLE).transaction_version(app_id(date)) if delta.exists(store, TABLE) else None
    if not generation:
        raise StoreError(f"showcases for {date} are not published under {store.root}")
    return {"date": date, "generation": generation, "run_id": delta.committed_by(store, TABLE, app_id(date), generation),
            "version": delta.open_table(store, TABLE).version()}


def commit_date(store: Store, date: str, run_id: str, generation: int, files: list[dict], quarantine_file: dict,
                reads: dict, metadata: dict | None = None) -> delta.Committed:
    """Commit one night: its quarantine, then its showcases, each replacing exactly the ``dt = date`` partition under
    the application transaction ``<table>/dt=DATE`` at ``generation``. Raises LostRace (at the first commit) when
    another run committed this generation."""
    from .data.schema import SHOWCASES_QUARANTINE

    kwargs = dict(run_id=run_id, stage="nightly", app_version=generation, partition_by=["dt"], replace={"dt": date},
                  reads=reads)
    delta.commit(store, QUARANTINE_TABLE, [quarantine_file], SHOWCASES_QUARANTINE,
                 app_id=app_id(date, QUARANTINE_TABLE), **kwargs)
    return delta.commit(store, TABLE, files, SHOWCASES, app_id=app_id(date), metadata=metadata, **kwargs)


def read_showcases(root: str, date: str | None = None, columns: list[str] | None = None,
                   version: int | None = None) -> pa.Table:
    """Every showcase of a published date (default: the newest), as one Arrow table with the SHOWCASES schema.
    ``version`` reads the table as it was at that Delta version (time travel)."""
    store = Store.open(root)
    if not delta.exists(store, TABLE):
        raise StoreError(f"no showcases published under {store.root} yet (no table at {store.uri(TABLE)})")
    dates = published_dates(store, version)
    date = date or (dates[-1] if dates else "")
    if date not in dates:
        raise StoreError(f"showcases for {date} are not published under {store.root}")
    wanted = SHOWCASES if columns is None else pa.schema([SHOWCASES.field(c) for c in columns])
    table = delta.read(store, TABLE, version, columns=wanted.names, filters=[("dt", "=", date)])
    return table.select(wanted.names).cast(wanted)


# -- assembly -----------------------------------------------------------------------------------------------------
# What one showcase needs: the business's photos (the DPP's ground set), the user's profile (the mean CLIP features of
# their history photos and reviews, never the target business) and history review features for the generator.
QUARANTINE_REASONS = {
    "missing_field": "user_id or business_id is empty",
    "duplicate_pair": "the pair appears more than once in the candidates; the first one is kept",
    "unknown_user": "the user has no review in the published tables",
    "unknown_business": "the business has no review in the published tables",
    "no_photos": "the business has no embedded photo to show",
}


@dataclass
class ShowcaseContext:
    """Lookups built once from the tables and embeddings (and shared by every assembler of a run)."""

    photo_ids: list[str]
    photo_vecs: np.ndarray  # float32 [P, D]
    photo_uris: list[str]
    business_photos: dict[str, np.ndarray]  # business -> rows of photo_vecs
    user_reviews: dict[str, list[dict]]  # user -> their reviews (review_id, business_id, pic_ids, history)
    text_row: dict[str, int]  # "review:<id>" -> row of text_vecs
    text_vecs: np.ndarray
    known_businesses: set[str]
    photo_row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.photo_row:
            self.photo_row = {p: i for i, p in enumerate(self.photo_ids)}


def build_context(store: Store, encoder_id: str) -> ShowcaseContext:
    from .encoders.embed import read_embeddings
    from .selection.data import embedding_matrix

    photo_ids, photo_vecs = embedding_matrix(read_embeddings(store, encoder_id, "images"))
    row_of = {p: i for i, p in enumerate(photo_ids)}
    uris = [""] * len(photo_ids)
    business_photos: dict[str, list[int]] = {}
    images = store.read_table("images", ["image_id", "business_id", "uri"])
    for image_id, business, uri in zip(*(images.column(c).to_pylist() for c in ("image_id", "business_id", "uri"))):
        row = row_of.get(image_id)
        if row is not None and not uris[row]:
            uris[row] = uri
            business_photos.setdefault(business, []).append(row)
    reviews = store.read_table("reviews", ["review_id", "user_id", "business_id", "pic_ids", "history"])
    user_reviews: dict[str, list[dict]] = {}
    for r in reviews.to_pylist():
        user_reviews.setdefault(r.pop("user_id"), []).append(r)
    text_ids, text_vecs = embedding_matrix(read_embeddings(store, encoder_id, "texts"))
    return ShowcaseContext(photo_ids, photo_vecs, uris, {b: np.array(r, np.int64) for b, r in business_photos.items()},
                           user_reviews, {t: i for i, t in enumerate(text_ids)}, text_vecs,
                           set(reviews.column("business_id").to_pylist()))


def check_pairs(pairs: list[dict], context: ShowcaseContext) -> tuple[list[dict], list[dict]]:
    """(pairs that can get a showcase, quarantine rows {user_id, business_id, reason, detail})."""
    good, bad, seen = [], [], set()
    for p in pairs:
        user, business = p.get("user_id") or "", p.get("business_id") or ""
        reason = None
        if not user or not business:
            reason = "missing_field"
        elif (user, business) in seen:
            reason = "duplicate_pair"
        elif user not in context.user_reviews:
            reason = "unknown_user"
        elif business not in context.known_businesses:
            reason = "unknown_business"
        elif not len(context.business_photos.get(business, ())):
            reason = "no_photos"
        seen.add((user, business))
        if reason:
            bad.append({"user_id": user, "business_id": business, "reason": reason,
                        "detail": QUARANTINE_REASONS[reason]})
        else:
            good.append(p)
    return good, bad


class ShowcaseAssembler:
    """DPP picks + PC²L explanations for batches of checked pairs; one per process (loads each model once).
    ``generator_uri`` None makes images-only showcases (null explanation, ``images_only`` true)."""

    def __init__(self, context: ShowcaseContext, dpp_uri: str, generator_uri: str | None, k: int = 3,
                 num_beams: int = 2, device: str = "cpu", decoding: dict | None = None):
        from .generation.model import load_pc2l
        from .selection.kernel import load_dpp

        from .generation import DECODING

        self.context, self.k, self.num_beams, self.device = context, k, num_beams, device
        self.decoding = {**DECODING, **(decoding or {})}
        self.dpp, self.dpp_config = load_dpp(dpp_uri)
        self.dpp.to(device)
        self.generator = self.tokenizer = self.generator_config = None
        if generator_uri:
            self.generator, self.tokenizer, self.generator_config = load_pc2l(generator_uri, device)
        self.dpp_uri, self.generator_uri = dpp_uri, generator_uri

    def _profile(self, user: str, business: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(mean history photo feature, mean history review feature, history text rows) without the business."""
        from .selection.data import history_text_keys

        ctx = self.context
        dim = ctx.photo_vecs.shape[1]
        other = [r for r in ctx.user_reviews.get(user, []) if r["business_id"] != business]
        photo_rows = [ctx.photo_row[p] for r in other for p in r["pic_ids"] or [] if p in ctx.photo_row]
        keys = set().union(*(history_text_keys({**review, "business_id": business}, other)
                             for review in ctx.user_reviews.get(user, [])))
        text_rows = [ctx.text_row[k] for k in sorted(keys) if k in ctx.text_row]
        img = ctx.photo_vecs[photo_rows].mean(0) if photo_rows else np.zeros(dim, np.float32)
        txt = ctx.text_vecs[text_rows].mean(0) if text_rows else np.zeros(dim, np.float32)
        return img.astype(np.float32), txt.astype(np.float32), text_rows

    def assemble(self, pairs: list[dict], run_id: str, generated_at: str) -> list[dict]:
        """Showcase rows (SHOWCASES fields) for pairs that passed ``check_pairs``, in the given order."""
        import torch

        from .generation.data import pack
        from .generation.decode import generate
        from .selection.greedy import greedy_map
        from .selection.kernel import profile_input

        if not pairs:
            return []
        ctx = self.context
        grounds = [ctx.business_photos[p["business_id"]] for p in pairs]
        profiles = [self._profile(p["user_id"], p["business_id"]) for p in pairs]
        width = max(len(g) for g in grounds)
        dim = ctx.photo_vecs.shape[1]
        photos = np.zeros((len(pairs), width, dim), np.float32)
        mask = np.zeros((len(pairs), width), bool)
        for i, g in enumerate(grounds):
            photos[i, :len(g)] = ctx.photo_vecs[g]
            mask[i, :len(g)] = True
        t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=self.device)  # noqa: E731
        with torch.no_grad():
            profile = profile_input(t(np.stack([p[0] for p in profiles])), t(np.stack([p[1] for p in profiles])),
                                    self.dpp.modality)
            L = self.dpp(profile, t(photos), t(mask, torch.bool))
            picks = greedy_map(L.double(), self.k, t(mask, torch.bool)).cpu().numpy()
            quality = self.dpp.quality(profile, t(photos)).cpu().numpy()
        picked_rows = [[int(grounds[i][j]) for j in row if j >= 0] for i, row in enumerate(picks)]
        picked_scores = [[float(quality[i][j]) for j in row if j >= 0] for i, row in enumerate(picks)]
        texts = [None] * len(pairs)
        if self.generator is not None:
            cfg = self.generator_config
            photo_feats, photo_mask = pack([[ctx.photo_vecs[r] for r in rows] for rows in picked_rows],
                                           cfg["max_photos"], dim)
            hist_feats, hist_mask = pack([[ctx.text_vecs[r] for r in p[2][:cfg["max_history"]]] for p in profiles],
                                         cfg["max_history"], dim)
            texts = generate(self.generator, self.tokenizer, photo_feats, photo_mask, hist_feats, hist_mask,
                             num_beams=self.num_beams, **self.decoding)
        rows = []
        for p, prof, prows, scores, text in zip(pairs, profiles, picked_rows, picked_scores, texts):
            score = p.get("score")
            rows.append({"user_id": p["user_id"], "business_id": p["business_id"],
                         "image_ids": [ctx.photo_ids[r] for r in prows], "image_uris": [ctx.photo_uris[r] for r in prows],
                         "image_scores": scores, "explanation": text, "images_only": self.generator is None,
                         "cold_start": not prof[2] and not prof[0].any(),
                         "candidate_score": None if score is None else float(score), "dt": None,
                         "encoder_id": self.dpp_config.get("encoder_id", ""), "dpp_model": self.dpp_uri,
                         "generator_model": self.generator_uri, "run_id": run_id, "generated_at": generated_at})
        return rows
