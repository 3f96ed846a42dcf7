"""The synthetic world's grounding rate: the share of explanations that name at least one entity actually shown in
their input photos.

An entity is named when its name occurs as whole words, case-insensitively ("pad thai" in "The Pad Thai was great!").
A photo's entities come from the aligned sentences (``sentences.entities`` of the sentences whose ``pic_ids`` list
the photo), so the rate needs no access to the world's generator.
"""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=4096)
def _pattern(entity: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, entity.lower().split())) + r"(?!\w)")


def names_entity(text: str, entities) -> bool:
    lowered = text.lower()
    return any(_pattern(e).search(lowered) for e in entities if e.strip())


def grounding_rate(explanations: list[str], shown_entities: list) -> dict:
    """explanations[i] is grounded when it names an entity of shown_entities[i] (the entities in its photos).
    Explanations whose photos show no known entity are left out of the rate and counted."""
    if len(explanations) != len(shown_entities):
        raise ValueError(f"{len(explanations)} explanations for {len(shown_entities)} entity sets")
    grounded = scored = 0
    for text, entities in zip(explanations, shown_entities):
        if not entities:
            continue
        scored += 1
        grounded += names_entity(text, entities)
    return {"rate": grounded / scored if scored else float("nan"), "grounded": grounded, "scored": scored,
            "without_entities": len(explanations) - scored}


def photo_entities(pic_ids_column, entities_column) -> dict[str, set[str]]:
    """photo id -> the entities of the aligned sentences that describe it (from the sentences table's columns)."""
    out: dict[str, set[str]] = {}
    for pics, entities in zip(pic_ids_column, entities_column):
        for p in pics or []:
            out.setdefault(p, set()).update(entities or [])
    return out


def wanted_photo_entities(batches, wanted: set[str]) -> dict[str, set[str]]:
    """``photo_entities`` for the ``wanted`` photos only, from the targets table's batches (an iterable of tables or
    record batches with pic_ids and entities, e.g. ``Store.iter_table_batches``): memory a batch and the wanted
    photos' entities."""
    out: dict[str, set[str]] = {}
    for batch in batches:
        found = photo_entities(batch.column("pic_ids").to_pylist(), batch.column("entities").to_pylist())
        for photo in wanted & found.keys():
            out.setdefault(photo, set()).update(found[photo])
    return out
