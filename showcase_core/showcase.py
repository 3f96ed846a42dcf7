"""The published showcases: the Delta tables, their reader, and the assembly of showcase rows.

ROOT/showcases/               Delta table partitioned by dt, rows with the SHOWCASES schema (showcase_core.data.schema)
ROOT/showcases_quarantine/    Delta table partitioned by dt: the candidate pairs that got no showcase, with a reason

Each date is committed once by one nightly run (application transaction ``showcases/dt=DATE``, version = the
publish generation, +1 per ``--force``). ``read_showcases(root, date=None)`` reads the newest date by default;
any engine that reads Delta (Spark, Trino, Athena, DuckDB, Polars) reads the same rows.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import tables as delta
from .data.schema import SHOWCASES
from .features import GroundSet, Profile, ground_set, profile
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


def commit_date(store: Store, date: str, run_id: str, generation: int, files: list[dict], quarantine_files: list[dict],
                reads: dict, metadata: dict | None = None) -> delta.Committed:
    """Commit one night: its quarantine, then its showcases, each replacing exactly the ``dt = date`` partition under
    the application transaction ``<table>/dt=DATE`` at ``generation``. Raises LostRace (at the first commit) when
    another run committed this generation."""
    from .data.schema import SHOWCASES_QUARANTINE

    kwargs = dict(run_id=run_id, stage="nightly", app_version=generation, partition_by=["dt"], replace={"dt": date},
                  reads=reads)
    delta.commit(store, QUARANTINE_TABLE, quarantine_files, SHOWCASES_QUARANTINE,
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


# -- the published rows by key (Serve) ------------------------------------------------------------------------------
PART = re.compile(r"^part-(?P<run>.+)-(?P<unit>\d{5})-of-(?P<units>\d{5})\.parquet$")


def part_name(run_id: str, unit: int, units: int) -> str:
    """A nightly data file: unit ``unit`` of ``units`` (the business's stable hash bucket, features.bucket_of)."""
    return f"part-{run_id}-{unit:05d}-of-{units:05d}.parquet"


class PublishedShowcases:
    """One pair's row of the newest published date, by key, without holding the date: the unit of a business names
    the one data file that can hold its pairs, and that file's row groups (sorted by business and user) are pruned
    by their statistics. The table version is checked at most every ``refresh_s`` seconds, so a date committed later
    is served without a restart. Memory: a path per unit of the date and at most ``cache_rows`` cached rows."""

    def __init__(self, store: Store, refresh_s: float = 10.0, cache_rows: int = 10000):
        from collections import OrderedDict

        self.store, self.refresh_s, self.cache_rows = store, refresh_s, cache_rows
        self.version, self.date, self.units, self.files, self.checked = None, None, 0, {}, -1e18
        self.cache: OrderedDict = OrderedDict()

    def refresh(self) -> None:
        import time

        if time.monotonic() - self.checked < self.refresh_s:
            return
        self.checked = time.monotonic()
        version = delta.open_table(self.store, TABLE).version() if delta.exists(self.store, TABLE) else None
        if version == self.version:
            return
        dates = published_dates(self.store, version) if version is not None else []
        self.version, self.date, self.files, self.units = version, dates[-1] if dates else None, {}, 0
        self.cache.clear()
        if self.date:
            actions = pa.table(delta.open_table(self.store, TABLE, version).get_add_actions(flatten=True))
            for path, dt in zip(actions.column("path").to_pylist(), actions.column("partition.dt").to_pylist()):
                match = PART.match(path.rsplit("/", 1)[-1])
                if dt == self.date:
                    key = (int(match["unit"]), int(match["units"])) if match else ("other", len(self.files))
                    self.files.setdefault(key, []).append(path)
            self.units = max((k[1] for k in self.files if k[0] != "other"), default=0)

    def get(self, user_id: str, business_id: str) -> dict | None:
        """The pair's row of the newest date (SHOWCASES fields), or None."""
        import pyarrow.dataset as ds

        from .features import bucket_of

        self.refresh()
        if not self.date:
            return None
        key = (user_id, business_id)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        unit = int(bucket_of([business_id], self.units)[0]) if self.units else -1
        paths = self.files.get((unit, self.units), []) + [p for k, v in self.files.items() if k[0] == "other"
                                                          for p in v]
        row = None
        if paths:
            found = ds.dataset([self.store.path(TABLE, p) for p in paths], filesystem=self.store.fs,
                               format="parquet").to_table(filter=(ds.field("business_id") == business_id)
                                                          & (ds.field("user_id") == user_id))
            if found.num_rows:
                row = {**found.slice(0, 1).to_pylist()[0], "dt": self.date}
        if row is not None and self.cache_rows:
            self.cache[key] = row
            if len(self.cache) > self.cache_rows:
                self.cache.popitem(last=False)
        return row


# -- assembly -----------------------------------------------------------------------------------------------------
# What one showcase needs (showcase_core.features defines both): the business's ground set and the user's profile for
# the pair (never the target business), with the history reviews the generator reads.
QUARANTINE_REASONS = {
    "missing_field": "user_id or business_id is empty",
    "duplicate_pair": "the pair appears more than once in the candidates; the one with the best rank (then the "
                      "highest score) is kept",
    "unknown_user": "the user has no review in the published tables",
    "unknown_business": "the business has no review in the published tables",
    "no_photos": "the business has no embedded photo to show",
}


def quarantine_row(user_id: str, business_id: str, reason: str) -> dict:
    return {"user_id": user_id, "business_id": business_id, "reason": reason, "detail": QUARANTINE_REASONS[reason]}


@dataclass
class PairInputs:
    """Everything the DPP and the generator read for one pair."""

    user_id: str
    business_id: str
    profile: Profile
    ground: GroundSet
    score: float | None = None
    rank: int | None = None


def check_pairs(pairs: list[dict], users: dict[str, dict], businesses: dict[str, dict], dim: int,
                max_history: int) -> tuple[list[PairInputs], list[dict]]:
    """Pairs -> (inputs of the pairs that can get a showcase, quarantine rows {user_id, business_id, reason,
    detail, index: the pair's position}), given the users and businesses feature rows of their ids (FeatureLookup.rows). A repeated pair keeps
    its first occurrence here (the nightly orders repeats by rank and score before)."""
    good, bad, seen = [], [], set()
    for index, p in enumerate(pairs):
        user, business = p.get("user_id") or "", p.get("business_id") or ""
        reason = None
        if not user or not business:
            reason = "missing_field"
        elif (user, business) in seen:
            reason = "duplicate_pair"
        elif user not in users:
            reason = "unknown_user"
        elif business not in businesses:
            reason = "unknown_business"
        elif not businesses[business]["image_ids"]:
            reason = "no_photos"
        seen.add((user, business))
        if reason:
            bad.append({**quarantine_row(user, business, reason), "index": index})
        else:
            good.append(PairInputs(user, business, profile(users[user], business, dim, max_history),
                                   ground_set(businesses[business], dim), p.get("score"), p.get("rank")))
    return good, bad


class ShowcaseAssembler:
    """DPP picks + PC²L explanations for batches of checked pairs; one per process (loads each model once).
    ``generator_uri`` None makes images-only showcases (null explanation, ``images_only`` true)."""

    def __init__(self, dpp_uri: str, generator_uri: str | None, k: int = 3, num_beams: int = 2, device: str = "cpu",
                 decoding: dict | None = None):
        from .generation import DECODING
        from .generation.model import load_pc2l
        from .selection.kernel import load_dpp

        self.k, self.num_beams, self.device = k, num_beams, device
        self.decoding = {**DECODING, **(decoding or {})}
        self.dpp, self.dpp_config = load_dpp(dpp_uri)
        self.dpp.to(device)
        self.generator = self.tokenizer = self.generator_config = None
        if generator_uri:
            self.generator, self.tokenizer, self.generator_config = load_pc2l(generator_uri, device)
        self.dpp_uri, self.generator_uri = dpp_uri, generator_uri
        self.seconds = {"dpp": 0.0, "generation": 0.0}  # where assemble's time went, summed over calls

    @property
    def max_history(self) -> int:
        return self.generator_config["max_history"] if self.generator_config else 0

    def assemble(self, pairs: list[PairInputs], run_id: str, generated_at: str) -> list[dict]:
        """Showcase rows (SHOWCASES fields, ``dt`` None) for checked pairs, in the given order."""
        import torch

        from .generation.data import pack
        from .generation.decode import generate
        from .selection.greedy import greedy_map
        from .selection.kernel import profile_input

        if not pairs:
            return []
        started = time.perf_counter()
        dim = pairs[0].ground.vectors.shape[1]
        vectors, slots = shared_ground_sets(pairs)
        mask = slots < len(vectors)
        t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=self.device)  # noqa: E731
        with torch.no_grad():
            profile_in = profile_input(t(np.stack([p.profile.photo for p in pairs])),
                                       t(np.stack([p.profile.text for p in pairs])), self.dpp.modality)
            # each distinct photo's terms once, then per pair and slot (a padded slot: zeros, masked out)
            p, g = (torch.cat([x, x.new_zeros(1, x.shape[1])]) for x in self.dpp.photo_terms(t(vectors)))
            index, mask_in = t(slots, torch.long), t(mask, torch.bool)
            quality_in = self.dpp.quality(profile_in, p[index])  # the kernel's q, and the image scores reported
            L = self.dpp.kernel(quality_in, g[index], mask_in)
            picks = greedy_map(L.double(), self.k, mask_in).cpu().numpy()
            quality = quality_in.cpu().numpy()
        picked = [[int(j) for j in row if j >= 0] for row in picks]
        generating = time.perf_counter()
        self.seconds["dpp"] += generating - started
        texts = [None] * len(pairs)
        if self.generator is not None:
            cfg = self.generator_config
            photo_feats, photo_mask = pack([[p.ground.vectors[j] for j in rows] for p, rows in zip(pairs, picked)],
                                           cfg["max_photos"], dim)
            hist_feats, hist_mask = pack([list(p.profile.history[:cfg["max_history"]]) for p in pairs],
                                         cfg["max_history"], dim)
            texts = generate(self.generator, self.tokenizer, photo_feats, photo_mask, hist_feats, hist_mask,
                             num_beams=self.num_beams, **self.decoding)
        self.seconds["generation"] += time.perf_counter() - generating
        rows = []
        for i, (p, rows_i, text) in enumerate(zip(pairs, picked, texts)):
            rows.append({"user_id": p.user_id, "business_id": p.business_id,
                         "image_ids": [p.ground.image_ids[j] for j in rows_i],
                         "image_uris": [p.ground.image_uris[j] for j in rows_i],
                         "image_scores": [float(quality[i][j]) for j in rows_i], "explanation": text,
                         "images_only": self.generator is None, "cold_start": not p.profile.has_history,
                         "candidate_score": None if p.score is None else float(p.score),
                         "candidate_rank": None if p.rank is None else int(p.rank), "dt": None,
                         "encoder_id": self.dpp_config.get("encoder_id", ""), "dpp_model": self.dpp_uri,
                         "generator_model": self.generator_uri, "run_id": run_id, "generated_at": generated_at})
        return rows


def shared_ground_sets(pairs: list[PairInputs]) -> tuple[np.ndarray, np.ndarray]:
    """(the photo vectors of the pairs' distinct ground sets, stacked [U, D]; slots [B, width]: row i holds pair i's
    photos as indices into them, then U for padding). The pairs of one business share its ground set, and a unit's
    pairs come sorted by business, so a batch of 256 pairs holds a few dozen ground sets: the DPP's photo terms run
    once per photo, not once per pair and padded slot (the large world's nightly: 4 s of the writers' time, not
    35 s)."""
    width = max(len(p.ground.image_ids) for p in pairs)
    first: dict[tuple, int] = {}
    blocks, offsets, rows = [], [], 0
    for p in pairs:
        key = tuple(p.ground.image_ids)
        if key not in first:
            first[key], rows = rows, rows + len(p.ground.image_ids)
            blocks.append(p.ground.vectors)
        offsets.append(first[key])
    vectors = np.concatenate(blocks).astype(np.float32, copy=False)
    slots = np.full((len(pairs), width), rows, np.int64)
    for i, (p, offset) in enumerate(zip(pairs, offsets)):
        slots[i, :len(p.ground.image_ids)] = np.arange(offset, offset + len(p.ground.image_ids))
    return vectors, slots


def resolve_models(store, dpp_modality: str, generator_variant: str | None) -> dict:
    """The latest DPP's ``dpp_modality`` model and PC²L's ``generator_variant`` (None: images only), on one encoder
    whose embeddings are there; checked before anything loads (``registry.RegistryError`` otherwise)."""
    from . import registry

    dpp = registry.latest(store, "dpp")
    dpp_uri = dpp.variant(dpp_modality)
    generator_uri = None
    if generator_variant:
        pc2l = registry.latest(store, "pc2l")
        generator_uri = pc2l.variant(generator_variant)
        if pc2l.encoder_id != dpp.encoder_id:
            raise registry.RegistryError(f"the DPP uses encoder {dpp.encoder_id} but PC2L uses {pc2l.encoder_id}: "
                                         "retrain one on the same embeddings")
    registry.check_files(dpp_uri, generator_uri)
    registry.encoder(store, dpp.encoder_id)
    return {"dpp": dpp_uri, "generator": generator_uri, "encoder_id": dpp.encoder_id}
