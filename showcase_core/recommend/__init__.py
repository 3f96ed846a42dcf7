"""Candidate generation: multimodal recommenders that score every business for a user (no Ray here).

- ``interactions``: (user, business) interactions from the reviews table, the leave-one-out split with cold items.
- ``graph``: the normalised user-item adjacency (LightGCN) and the item-item kNN graph from content.
- ``models``: popularity, BPR-MF, LightGCN (IDs only), AlignRec (IDs + content, three alignments) and R2MR's
  modality reviewer on top of AlignRec.
- ``training``: BPR sampling and one training epoch of any of them; ``rank``: exact top-N with masks.

Graphs, content and index buffers are rebuilt from the data (``data.build_model``), so they are not in a model's state
dict or its checkpoints: those hold the learned parameters only.

Metrics (Recall, NDCG, Precision @K under full ranking) are in ``showcase_core.metrics.recommend``.
"""
