"""Recipes that train the embedded base models (not continual-learning methods): the image
base (base.py) and its audio/video extension (media.py)."""

from typing import Any

from mmcl.train import TrainSettings


def recipe_settings(fields: dict[str, Any]) -> TrainSettings:
    """A base recipe's training settings. Its warmup is the 5% every shipped and cached base was
    built with, not `TrainSettings`' default (now 20%): a base's cache key holds its preset's
    fields, so a default that moved would build other weights under the same key."""
    return TrainSettings(**{"warmup_ratio": 0.05, **fields})
