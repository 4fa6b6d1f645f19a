"""Custom data: your own catalogue as JSONL / JSON / CSV files, for every stage of the progressive pipeline.

The file formats (image-text pairs and triplets, one row per record) and their strict readers are in
``ctiir.datamodules.tables``. Evaluation (protocol ``"custom"``): the queries are the split's triplets; the
gallery is the de-duplicated union of their references and targets (first-seen order) plus an optional
gallery file; ``ctiir.datamodules.protocol`` applies the rules (missing images, reference exclusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctiir.datamodules.base import CTIIRDataModule, Split
from ctiir.datamodules.protocol import ComposedQuery, ComposedSource, GalleryImage, ProtocolSpec
from ctiir.datamodules.records import Triplet
from ctiir.datamodules.tables import read_gallery_file, read_triplets, split_records
from ctiir.datamodules.text import TextMode, compose_query_text


def triplet_queries(triplets: Sequence[Triplet], mode: TextMode = "clip4cir") -> list[ComposedQuery]:
    """Composed queries from triplets (query name = the triplet's source)."""
    return [
        ComposedQuery(
            t.source or f"{t.reference_id}->{t.target_id}",
            t.reference_id,
            t.reference,
            compose_query_text(t.captions, mode),
            t.target_id,
            t.target,
            source=t.source,
        )
        for t in triplets
    ]


# ---------------------------------------------------------------------------------------------- datamodule
class CustomDataModule(CTIIRDataModule):
    """Your own catalogue, for the whole progressive pipeline (Stage I, II and III, and evaluation).

    Args:
        root: the image root; relative paths in the files are relative to it. Relative file arguments are
            looked up under ``root`` first, then in the working directory.
        triplets: composed triplets file (Stage III training, Stage II image->image pairs, evaluation).
        caption_pairs: image-caption file for Stage I (open-domain image-text training).
        descriptions: image-description file for Stage II text->image training.
        gallery: optional text file of extra gallery image paths (one per line), added to the evaluation
            gallery after the references and targets of the split's triplets.
        exclude_reference: remove each query's reference from its ranking (items below move up one place).
        **kwargs: ``CTIIRDataModule``'s arguments.

    Evaluation (protocol ``"custom"``): queries = the split's triplets; gallery = the de-duplicated union of
    their references and targets (first-seen order) plus ``gallery``; R@1/5/10/50, headline R@1/R@10/R@50.
    "test" uses the rows marked ``test`` (the ``val`` rows, with a warning, when there are none); a split
    without rows is a ``MissingSplitError``.
    """

    name = "custom"

    def __init__(
        self,
        root: str,
        triplets: str | None = None,
        caption_pairs: str | None = None,
        descriptions: str | None = None,
        gallery: str | None = None,
        exclude_reference: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (triplets or caption_pairs or descriptions):
            raise ValueError("CustomDataModule needs at least one of triplets, caption_pairs or descriptions")
        self.root = Path(root)
        self.triplets_file = triplets
        self.caption_pairs_file = caption_pairs
        self.descriptions_file = descriptions
        self.gallery_file = gallery
        self.exclude_reference = exclude_reference

    def triplets(self, split: Split) -> list[Triplet]:
        if self.triplets_file is None:
            raise NotImplementedError("CustomDataModule: set triplets (a reference/target/text JSONL/CSV file)")
        return split_records(read_triplets, self.triplets_file, self.root, split)

    def evaluation_gallery(self, triplets: Sequence[Triplet]) -> list[GalleryImage]:
        """The references and targets of ``triplets`` (first seen first), then the gallery file's images."""
        entries: dict[str, Path] = {}
        for t in triplets:
            entries.setdefault(t.reference_id, t.reference)
            entries.setdefault(t.target_id, t.target)
        if self.gallery_file is not None:
            for image_id, path in read_gallery_file(self.gallery_file, self.root):
                entries.setdefault(image_id, path)
        return [GalleryImage(image_id, path) for image_id, path in entries.items()]

    def composed_sources(self, split: Split) -> list[ComposedSource]:
        triplets = self.triplets(split)
        protocol = ProtocolSpec("custom", (1, 5, 10, 50), ("R@1", "R@10", "R@50"), self.exclude_reference)
        return [ComposedSource(protocol, None, triplet_queries(triplets), self.evaluation_gallery(triplets))]
