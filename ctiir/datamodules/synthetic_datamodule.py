"""``SyntheticDataModule``: the embedded benchmark, generated on first use and read by the real FashionIQ
datamodule, unchanged. The generator itself (``ctiir.datamodules.synthetic``) stays import-light, so that
``ctiir synth`` starts without Lightning."""

from __future__ import annotations

from typing import Any

from ctiir.datamodules.fashioniq import FashionIQDataModule
from ctiir.datamodules.synthetic import META_FILE, SIZES, generate


class SyntheticDataModule(FashionIQDataModule):
    """The embedded benchmark, generated into ``root`` on first use and read as FashionIQ.

    Stage I reads ``stage1/pairs.jsonl`` (open-domain scenes), Stage II ``stage2/descriptions.jsonl`` and the
    FashionIQ triplets, Stage III the triplets. Generation (in ``prepare_data``, so only one process per node
    writes under DDP) is deterministic in ``synth_seed`` and ``size``; an existing identical dataset is reused,
    and a different one is never overwritten.

    Args:
        root: where the benchmark is (or is generated).
        size: ``tiny``, ``default`` or ``large`` (see ``SIZES``).
        synth_seed: the generator's seed.
        generate_if_missing: generate in ``prepare_data`` when ``root`` holds no dataset.
        **kwargs: ``FashionIQDataModule``'s evaluation arguments (``protocol``, ``query_text``,
            ``exclude_reference``, ``categories``) and ``CTIIRDataModule``'s (batch size, workers, ...).
    """

    name = "synthetic"

    def __init__(
        self,
        root: str,
        size: str = "default",
        synth_seed: int = 0,
        generate_if_missing: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root, caption_pairs="stage1/pairs.jsonl", descriptions="stage2/descriptions.jsonl", **kwargs
        )
        if size not in SIZES:
            raise ValueError(f"SyntheticDataModule: unknown size {size!r}; expected one of {sorted(SIZES)}")
        self.size = size
        self.synth_seed = synth_seed
        self.generate_if_missing = generate_if_missing

    def prepare_data(self) -> None:
        """Generate the benchmark once (Lightning calls this on one process per node, before ``setup``).

        Call it yourself when using the datamodule without a trainer. An identical existing dataset is
        reused; a different one is never overwritten.
        """
        if self.generate_if_missing:
            generate(self.root, seed=self.synth_seed, size=self.size)

    def setup(self, stage: str | None = None) -> None:
        if not (self.root / META_FILE).is_file():
            hint = "call prepare_data() first" if self.generate_if_missing else f"run `ctiir synth --out {self.root}`"
            raise FileNotFoundError(f"{self.root}: no synthetic dataset ({META_FILE} missing); {hint}")
        super().setup(stage)

    def protocol_name(self) -> str:
        """``synthetic`` for the original protocol (``val/synthetic/dress/R@10``), else ``synthetic-val-split``."""
        return "synthetic" if self.protocol == "original" else f"synthetic-{self.protocol}"
