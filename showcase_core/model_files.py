"""A saved model directory: ``model.pt`` (state dict), ``config.json`` and ``card.json`` (the model card, written last).

Local path or s3:// URI; each file is written atomically, so a reader that finds the card finds the rest.
"""

from __future__ import annotations

import io
import json
import posixpath

import torch

from .store import NOT_THERE, StoreError, filesystem_for, read_bytes, write_bytes_atomic


def save_model_files(uri: str, state_dict: dict, config: dict, card: dict) -> None:
    fs, base = filesystem_for(uri)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    write_bytes_atomic(fs, posixpath.join(base, "model.pt"), buf.getvalue())
    write_bytes_atomic(fs, posixpath.join(base, "config.json"), json.dumps(config, indent=2).encode())
    write_bytes_atomic(fs, posixpath.join(base, "card.json"), json.dumps(card, indent=2, sort_keys=True).encode())


def load_model_config(uri: str, what: str) -> dict:
    """The config of a saved model, without its weights; StoreError naming ``what`` when it is not there."""
    return json.loads(_read(uri, "config.json", what))


def load_model_files(uri: str, what: str) -> tuple[dict, dict]:
    """(config, state dict) of a saved model; StoreError naming ``what`` when it is not there."""
    config = load_model_config(uri, what)
    state = torch.load(io.BytesIO(_read(uri, "model.pt", what)), map_location="cpu", weights_only=True)
    return config, state


def _read(uri: str, name: str, what: str) -> bytes:
    fs, base = filesystem_for(uri)
    try:
        return read_bytes(fs, posixpath.join(base, name))  # read again when it fails mid-stream (an S3 restart)
    except NOT_THERE:  # nothing there, or a file where the folder should be
        raise StoreError(f"no {what} at {uri} (expected a folder with config.json and model.pt)") from None
