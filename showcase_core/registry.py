"""The model registry: every trained model and every encoder's embeddings are published and resolved here.

One schema for all (``Entry``): name, version, uri, variants (variant -> uri, e.g. the DPP's modalities or PC²L's
ablation), encoder_id, data fingerprint, metrics, created_at, and ``extra`` for what one kind alone needs (Φ's
threshold, an encoder's load spec). Under ROOT, ``models/<name>/_LATEST.json`` holds the latest entry of a model and
``embeddings/<encoder_id>/_ENCODER.json`` the entry of an encoder; both are written atomically after the files they
point at, so a reader never sees an entry whose model is not there yet. Jobs call this module; none spells a path.
"""

from __future__ import annotations

import dataclasses
import posixpath

from .store import Store, StoreError, exists, filesystem_for, utc_now

# the job that publishes each model: named in the error when it is missing
PUBLISHERS = {"clip": "train_clip", "dpp": "train_dpp", "pc2l": "train_pc2l", "alignment": "distill",
              "recommender": "train_recommender", "encoder": "embed"}


class RegistryError(Exception):
    """A model, variant or encoder that is not published, or whose files are gone. One line."""


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    version: str
    uri: str
    encoder_id: str
    variants: dict = dataclasses.field(default_factory=dict)
    data_fingerprint: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    created_at: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def variant(self, variant: str) -> str:
        """The URI of one variant, or a one-line error listing those there are."""
        if variant not in self.variants:
            raise RegistryError(f"the latest {self.name} has no {variant!r} variant "
                                f"(has {', '.join(self.variants) or 'none'})")
        return self.variants[variant]


def _latest_rel(name: str) -> str:
    return f"models/{name}/_LATEST.json"


def _encoder_rel(encoder_id: str) -> str:
    return f"embeddings/{encoder_id}/_ENCODER.json"


def _entry(raw: dict, where: str) -> Entry:
    fields = {f.name for f in dataclasses.fields(Entry)}
    if not isinstance(raw, dict) or not {"name", "version", "uri"} <= raw.keys():
        raise RegistryError(f"{where} is not a registry entry (written by an older version? retrain into a new ROOT)")
    return Entry(**{k: v for k, v in raw.items() if k in fields})


def _publish(store: Store, rel: str, entry: Entry) -> Entry:
    store.write_json(rel, dataclasses.asdict(entry))
    return entry


def publish(store: Store, name: str, version: str, uri: str, encoder_id: str, *, variants: dict | None = None,
            data_fingerprint: dict | None = None, metrics: dict | None = None, extra: dict | None = None) -> Entry:
    """Make ``uri`` (with its variants) the latest ``name`` model. Call after its files are written."""
    return _publish(store, _latest_rel(name), Entry(name, version, uri, encoder_id, dict(variants or {}),
                                                    dict(data_fingerprint or {}), dict(metrics or {}), utc_now(),
                                                    dict(extra or {})))


def latest(store: Store, name: str) -> Entry:
    """The latest published ``name`` model, or a one-line error naming the job that publishes it."""
    try:
        raw = store.read_json(_latest_rel(name))
    except StoreError:
        raise RegistryError(f"no trained {name} model under {store.root}/models/{name} "
                            f"(run `showcase {PUBLISHERS.get(name, name)}`)") from None
    return _entry(raw, store.uri(_latest_rel(name)))


def is_published(store: Store, name: str) -> bool:
    return store.exists(_latest_rel(name))


def check_files(*uris: str) -> None:
    """Each model directory still holds its card (a vacuum or a hand-deleted folder would leave a dangling entry)."""
    for uri in filter(None, uris):
        fs, base = filesystem_for(uri)
        if not exists(fs, posixpath.join(base, "card.json")):
            raise RegistryError(f"model files missing at {uri}")


def publish_encoder(store: Store, encoder_id: str, spec: dict, **extra) -> Entry:
    """Record how to load the encoder whose embeddings are under ``embeddings/<encoder_id>/``."""
    return _publish(store, _encoder_rel(encoder_id), Entry("encoder", encoder_id, spec.get("checkpoint", ""),
                                                           encoder_id, created_at=utc_now(),
                                                           extra={"spec": spec, **extra}))


def encoder(store: Store, encoder_id: str) -> Entry:
    """The entry of an encoder with embeddings under ROOT (``extra["spec"]`` loads it)."""
    try:
        raw = store.read_json(_encoder_rel(encoder_id))
    except StoreError:
        raise RegistryError(f"no embeddings of encoder {encoder_id} under {store.root} (run `showcase embed`)") from None
    return _entry(raw, store.uri(_encoder_rel(encoder_id)))


def resolve_encoder_id(store: Store, requested: str) -> str:
    """``latest`` -> the encoder of the latest trained CLIP; any other value is an encoder id as given."""
    if requested != "latest":
        return requested
    try:
        return latest(store, "clip").encoder_id
    except RegistryError:
        raise RegistryError(f"no trained CLIP under {store.root}/models/clip; pass --encoder ENCODER_ID") from None
