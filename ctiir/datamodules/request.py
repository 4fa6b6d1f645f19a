"""The contract between a stage and a datamodule: the stage says what it needs, in one call.

A stage, in its ``setup`` hook, calls ``datamodule.serve(stage.data_request())`` once. The request names the
training sources it trains on and the backbone whose transforms and input size the datamodule's
``preprocess`` choice applies to; ``serve`` answers with the :class:`Preprocessing` it uses, which the stage
records in its checkpoint. The datamodule never looks at the stage otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ctiir.datamodules.transforms import Preprocessing

Source = Literal["caption_pairs", "descriptions", "image_pairs", "triplets"]
SOURCES: tuple[str, ...] = get_args(Source)


@dataclass(frozen=True)
class DataRequest:
    """What a stage needs from its datamodule.

    ``sources`` maps each training loader's key to the source that fills it: ``{"main": "triplets"}`` for
    Stage III, ``{"t2i": "descriptions", "i2i": "image_pairs"}`` for Stage II with both tasks (several keys
    give a ``CombinedLoader`` of dict batches). ``backbone`` provides ``train_transform``,
    ``eval_transform`` and ``image_size``. ``trained_with`` is the preprocessing the stage's weights were
    trained with, when it has one (from a checkpoint). ``inference``: the stage is only evaluated or used
    (validate, test, predict, a submission), so ``trained_with`` is used whatever the datamodule's own
    choice; when training, the datamodule's choice is used. Either way a difference gets a warning.
    """

    sources: Mapping[str, Source]
    backbone: Any
    trained_with: Preprocessing | None = None
    inference: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a data request needs at least one training source")
        unknown = sorted({s for s in self.sources.values() if s not in SOURCES})
        if unknown:
            raise ValueError(f"unknown training source(s) {unknown}; known: {', '.join(SOURCES)}")
