"""How relative captions become query text (FashionIQ has two per triplet).

- ``clip4cir``: CLIP4Cir's concatenation, ``f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"``.
- ``clip4cir-random-order``: the same with the two captions in random order (training augmentation).
- ``average``: both orders; the two fused query embeddings are averaged at evaluation.
- ``first``: the first caption alone.
A single caption (Shoes, CIRR, custom data) is used as it is by every mode.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

TextMode = Literal["clip4cir", "clip4cir-random-order", "average", "first"]


def clip4cir_concat(c0: str, c1: str) -> str:
    return f"{c0.strip('.?, ').capitalize()} and {c1.strip('.?, ')}"


def compose_query_text(captions: Sequence[str], mode: TextMode) -> str | list[str]:
    """The evaluation query text: a string, or for ``average`` a list whose embeddings are averaged."""
    if len(captions) == 1:
        return captions[0]
    if mode in ("clip4cir", "clip4cir-random-order"):
        return clip4cir_concat(captions[0], captions[1])
    if mode == "average":
        return [clip4cir_concat(captions[0], captions[1]), clip4cir_concat(captions[1], captions[0])]
    if mode == "first":
        return captions[0]
    raise ValueError(f"unknown text mode {mode!r}; expected clip4cir, clip4cir-random-order, average or first")


def training_text(captions: Sequence[str], mode: TextMode, rng: random.Random) -> str:
    """The training query text for one triplet."""
    if len(captions) == 1:
        return captions[0]
    if mode == "clip4cir-random-order" or mode == "average":
        c0, c1 = (captions[0], captions[1]) if rng.random() < 0.5 else (captions[1], captions[0])
        return clip4cir_concat(c0, c1)
    text = compose_query_text(captions, mode)
    assert isinstance(text, str)
    return text
