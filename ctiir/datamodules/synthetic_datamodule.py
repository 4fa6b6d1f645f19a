"""``SyntheticDataModule``: the embedded benchmark, generated on first use and read by the real FashionIQ
datamodule, unchanged. The generator itself (``ctiir.datamodules.synthetic``) stays import-light, so that
``ctiir synth`` starts without Lightning."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ctiir.datamodules.base import Split
from ctiir.datamodules.fashioniq import FashionIQDataModule, caption_index
from ctiir.datamodules.protocol import ComposedQuery
from ctiir.datamodules.synthetic import (
    META_FILE,
    SIZES,
    VERSION,
    SyntheticOutputError,
    format_scenarios,
    generate,
    mix_of,
    parse_scenarios,
    query_scenarios,
    read_metadata,
)


class SyntheticDataModule(FashionIQDataModule):
    """The embedded benchmark, generated into ``root`` on first use and read as FashionIQ.

    Stage I reads ``stage1/pairs.jsonl`` (open-domain scenes), Stage II ``stage2/descriptions.jsonl`` and the
    FashionIQ triplets, Stage III the triplets. Generation (in ``prepare_data``, so only one process per node
    writes under DDP) is deterministic in ``synth_seed`` and ``size``; an existing identical dataset is reused,
    and a different one is never overwritten.

    Args:
        root: where the benchmark is (or is generated).
        size: ``tiny``, ``small``, ``default``, ``large`` or ``ablation`` (see ``SIZES``).
        synth_seed: the generator's seed.
        scenarios: the retrieval scenarios to generate: ``edit`` (the default benchmark), ``mixed`` (a third
            each of ``edit``, ``text-led`` and ``image-led``) or proportions such as
            ``edit=0.4,text-led=0.3,image-led=0.3`` (:func:`ctiir.datamodules.synthetic.parse_scenarios`).
            Results can be broken down by it: ``breakdown: [scenario]``.
        generate_if_missing: generate in ``prepare_data`` when ``root`` holds no dataset.
        **kwargs: ``FashionIQDataModule``'s evaluation arguments (``protocol``, ``query_text``,
            ``exclude_reference``, ``categories``) and ``CTIIRDataModule``'s (batch size, workers, ...).
    """

    name = "synthetic"
    breakdown_attributes = (*FashionIQDataModule.breakdown_attributes, "scenario")

    def __init__(
        self,
        root: str,
        size: str = "default",
        synth_seed: int = 0,
        scenarios: str = "edit",
        generate_if_missing: bool = True,
        **kwargs: Any,
    ) -> None:
        try:
            self.scenario_mix = parse_scenarios(scenarios)
        except ValueError as err:
            raise ValueError(f"SyntheticDataModule: scenarios={scenarios!r}: {err}") from None
        super().__init__(
            root=root, caption_pairs="stage1/pairs.jsonl", descriptions="stage2/descriptions.jsonl", **kwargs
        )
        if size not in SIZES:
            raise ValueError(f"SyntheticDataModule: unknown size {size!r}; expected one of {sorted(SIZES)}")
        self.size = size
        self.synth_seed = synth_seed
        self.generate_if_missing = generate_if_missing
        self._scenario_lists: dict[tuple[str, str], list[str]] = {}
        self._metadata: Mapping[str, Any] | None = None

    def prepare_data(self) -> None:
        """Generate the benchmark once (Lightning calls this on one process per node, before ``setup``).

        Call it yourself when using the datamodule without a trainer. An identical existing dataset is
        reused; a different one is never overwritten.
        """
        if self.generate_if_missing:
            try:
                generate(self.root, seed=self.synth_seed, size=self.size, scenarios=self.scenario_mix)
            except SyntheticOutputError as err:
                # The generator's advice (``--overwrite``) is ``ctiir synth``'s; say what this datamodule takes.
                raise SyntheticOutputError(self._explain(err)) from err

    def _explain(self, err: SyntheticOutputError) -> str:
        """What is at ``root``, and how to go on from a LightningCLI command, a YAML config or Python."""
        asked = format_scenarios(self.scenario_mix)
        scenarios = "" if asked == "edit" else f" --scenarios={asked}"
        regenerate = (
            f"`ctiir synth --out {self.root} --seed {self.synth_seed} --size {self.size}{scenarios} --overwrite=true`"
        )
        other_root = "or choose another root (--data.init_args.root=DIR)"
        try:
            meta = json.loads((self.root / META_FILE).read_text(encoding="utf-8"))
            seed, size, version, mix = meta["seed"], meta["size"], meta["version"], format_scenarios(mix_of(meta))
        except (OSError, ValueError, TypeError, KeyError):  # no readable metadata: the generator's words stand
            return f"{err}\nSyntheticDataModule: {other_root}."
        found = f"{self.root} holds the synthetic benchmark with seed={seed}, size={size!r}"
        found += "" if mix == "edit" else f", scenarios={mix}"
        if (seed, size, version, mix) == (self.synth_seed, self.size, VERSION, asked):
            return f"{found}, but it is incomplete ({err}).\nRegenerate it with {regenerate}, {other_root}."
        if version != VERSION:
            return (
                f"{found} written by generator version {version}, not {VERSION}.\nRegenerate it with {regenerate}, "
                f"{other_root}."
            )
        mine = {"size": self.size, "synth_seed": self.synth_seed, "scenarios": asked}
        differ = {k: v for k, v in (("size", size), ("synth_seed", seed), ("scenarios", mix)) if v != mine[k]}
        wanted = ", ".join(f"{k}={mine[k]!r}" for k in differ)
        flags = " ".join(f"--data.init_args.{k}={v}" for k, v in differ.items())
        short = " ".join(f"--data.{k}={v}" for k, v in differ.items())
        python = ", ".join(f"{k}={v!r}" for k, v in differ.items())
        return (
            f"{found}, but this SyntheticDataModule asks for {wanted}, and never overwrites a dataset.\n"
            f"To use the one that is there, pass {flags} (or {short}; in a YAML config under data.init_args; in Python "
            f"SyntheticDataModule(..., {python})). To replace it: {regenerate}. Or choose another root "
            "(--data.init_args.root=DIR)."
        )

    def setup(self, stage: str | None = None) -> None:
        if not (self.root / META_FILE).is_file():
            hint = "call prepare_data() first" if self.generate_if_missing else f"run `ctiir synth --out {self.root}`"
            raise FileNotFoundError(f"{self.root}: no synthetic dataset ({META_FILE} missing); {hint}")
        self._scenario_lists, self._metadata = {}, None  # the files may have been regenerated since
        super().setup(stage)

    def query_attribute(self, attribute: str, query: ComposedQuery, subset: str | None, split: Split) -> str:
        """``scenario``: the scenario ``synthetic.json`` records for the query's caption entry."""
        if attribute != "scenario":
            return super().query_attribute(attribute, query, subset, split)
        key = (str(subset), self.annotation_split(split))
        if key not in self._scenario_lists:
            if self._metadata is None:  # one parse of synthetic.json per setup, for every category
                self._metadata = read_metadata(self.root)
            self._scenario_lists[key] = query_scenarios(self._metadata, *key)
        return self._scenario_lists[key][caption_index(query.name)]

    def protocol_name(self) -> str:
        """``synthetic`` for the original protocol (``val/synthetic/dress/R@10``), else ``synthetic-val-split``."""
        return "synthetic" if self.protocol == "original" else f"synthetic-{self.protocol}"
