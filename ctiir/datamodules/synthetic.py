"""The embedded synthetic benchmark: a seeded, procedural composed-retrieval dataset drawn with PIL.

Why it exists: the real benchmarks need image downloads and a GPU. This generator gives every stage of the
pipeline data with the same on-disk shape as the real thing, small enough to train and measure on a CPU:

- Stage I: open-domain scenes of 1-3 coloured, patterned shapes with captions (``stage1/pairs.jsonl``).
  A different visual domain that shares the colour and pattern vocabulary with the garments.
- Stage II: one product description per garment (``stage2/descriptions.jsonl``).
- Stage III: triplets in the exact FashionIQ layout (``captions/``, ``image_splits/``, ``images/``).
- ``synthetic.json``: seed, size, generator version and every image's attributes, for tests and analysis.

Why it is hard enough: each triplet changes 2 or 3 attributes and its two captions state different parts of
the change. Each evaluation query brings into the gallery its reference, its target, two *partial* edits (the
reference with only some of the stated changes) and near-duplicates differing in one unstated attribute.
Attribute tuples are unique within a category's evaluation gallery, so "reference + stated changes"
identifies the target exactly, while the text alone (the stated attributes) or the image alone (the
reference's attributes) does not, and neither does adding the two (the partial edits tie with the target).

Determinism: metadata comes from one ``random.Random(seed)`` stream; each image is drawn with its own RNG
seeded from ``(seed, name)``, so files are byte-identical for a given seed and size.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import string
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from ctiir.datamodules.errors import DataError

GENERATOR = "ctiir.datamodules.synthetic"
VERSION = 1
META_FILE = "synthetic.json"
IMAGE_SIZE = 64
_SCALE = 2  # images are drawn at 2x and downsampled, so edges are anti-aliased
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------------------------- vocabulary
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 40),
    "blue": (35, 75, 205),
    "green": (35, 150, 60),
    "yellow": (240, 205, 35),
    "black": (28, 28, 30),
    "white": (246, 246, 246),
    "pink": (242, 135, 185),
    "purple": (125, 50, 165),
}
# The ``extended`` vocabulary (the ``ablation`` size) adds these, so that galleries of 1,000+ queries still
# hold unique attribute tuples: 12 x 5 x 4 x 3 x 4 x 3 = 8,640 per category instead of 4,320.
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "orange": (238, 128, 30),
    "brown": (118, 70, 34),
    "gray": (120, 120, 124),
    "navy": (28, 38, 112),
}
PALETTE = {**COLORS, **EXTRA_COLORS}
PATTERNS = ("solid", "striped", "vertical-striped", "dotted", "checked")
_SLEEVES = ("sleeveless", "short", "long")
_EXTRA_SLEEVES = ("three-quarter",)
_LENGTHS = {
    "dress": ("mini", "knee", "maxi"),
    "shirt": ("cropped", "hip", "tunic"),
    "toptee": ("cropped", "hip", "tunic"),
}
VOCABULARIES = ("base", "extended")


def attribute_values(category: str, vocabulary: str = "base") -> dict[str, tuple[str, ...]]:
    """The attributes of a garment category and their values (6 attributes, 3-12 values each)."""
    if category not in _LENGTHS:
        raise ValueError(f"unknown garment category {category!r}; expected one of {CATEGORIES}")
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown attribute vocabulary {vocabulary!r}; expected one of {VOCABULARIES}")
    extended = vocabulary == "extended"
    return {
        "color": tuple(PALETTE) if extended else tuple(COLORS),
        "pattern": PATTERNS,
        "sleeves": _SLEEVES + _EXTRA_SLEEVES if extended else _SLEEVES,
        "length": _LENGTHS[category],
        "neckline": ("v-neck", "crew", "collar", "turtleneck"),
        "fit": ("fitted", "straight", "loose"),
    }


ATTRIBUTES = tuple(attribute_values("dress"))

# Relative-caption phrasings. ``clauses`` stand alone ("is red"); ``tails`` follow another clause
# ("is red" + "with long sleeves"). Every phrasing names its value unambiguously, so captions can be parsed.
_COLOR_CLAUSES = ("is {}", "is {} in color", "is a {} one", "is {} instead")
_PHRASES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("pattern", "solid"): (("is solid colored", "is plain", "has no pattern"), ("with no pattern",)),
    ("pattern", "striped"): (("has horizontal stripes", "is horizontally striped"), ("with horizontal stripes",)),
    ("pattern", "vertical-striped"): (("has vertical stripes", "is vertically striped"), ("with vertical stripes",)),
    ("pattern", "dotted"): (("has polka dots", "is dotted"), ("with polka dots",)),
    ("pattern", "checked"): (
        ("is checked", "has a plaid pattern", "is checkered"),
        ("with a plaid pattern", "with checks"),
    ),
    ("sleeves", "sleeveless"): (("is sleeveless", "has no sleeves"), ("without sleeves",)),
    ("sleeves", "short"): (("has short sleeves", "is short sleeved"), ("with short sleeves",)),
    ("sleeves", "long"): (("has long sleeves", "is long sleeved"), ("with long sleeves",)),
    ("sleeves", "three-quarter"): (("has three-quarter sleeves", "has elbow sleeves"), ("with three-quarter sleeves",)),
    ("length", "mini"): (("is a mini dress", "is mini length"), ("in mini length",)),
    ("length", "knee"): (("is knee length", "ends at the knee"), ("at knee length",)),
    ("length", "maxi"): (("is a maxi dress", "is floor length maxi"), ("in maxi length",)),
    ("length", "cropped"): (("is cropped", "is a cropped cut"), ("in a cropped cut",)),
    ("length", "hip"): (("is hip length", "ends at the hip"), ("at hip length",)),
    ("length", "tunic"): (("is tunic length", "is a longer tunic"), ("in tunic length",)),
    ("neckline", "v-neck"): (("has a v-neck", "has a v neckline"), ("with a v-neck",)),
    ("neckline", "crew"): (("has a crew neck", "has a round neckline"), ("with a round neck",)),
    ("neckline", "collar"): (("has a collar", "is collared"), ("with a collar",)),
    ("neckline", "turtleneck"): (("has a turtleneck", "has a high neck"), ("with a turtleneck",)),
    ("fit", "fitted"): (("is fitted", "is tight fitting", "is more form fitting"), ("with a fitted cut",)),
    ("fit", "straight"): (("is straight cut", "has a straight fit"), ("with a straight cut",)),
    ("fit", "loose"): (("is loose", "is loose fitting", "is flowy"), ("with a loose fit",)),
}

# Product-description wording (Stage II) and scene wording (Stage I).
_NOUNS = {"dress": ("dress",), "shirt": ("shirt", "button-up shirt"), "toptee": ("top", "tee", "t-shirt")}
_DESC_PATTERN = {
    "solid": ("solid", "plain"),
    "striped": ("horizontally striped",),
    "vertical-striped": ("vertically striped",),
    "dotted": ("polka-dot", "dotted"),
    "checked": ("checked", "plaid"),
}
_DESC_SLEEVES = {
    "sleeveless": "no sleeves",
    "short": "short sleeves",
    "long": "long sleeves",
    "three-quarter": "three-quarter sleeves",
}
_DESC_NECK = {"v-neck": "v-neck", "crew": "crew neck", "collar": "collar", "turtleneck": "turtleneck"}
_DESC_LENGTH = {
    "mini": "mini length",
    "knee": "knee length",
    "maxi": "maxi length",
    "cropped": "cropped",
    "hip": "hip length",
    "tunic": "tunic length",
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
_SCENE_PATTERN = {
    "solid": ("", "solid "),
    "striped": ("horizontally striped ", "striped "),
    "vertical-striped": ("vertically striped ",),
    "dotted": ("dotted ", "polka-dot "),
    "checked": ("checked ", "plaid "),
}
_COLUMNS = ("on the left", "in the middle", "on the right")


# --------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class SynthSize:
    """How much to generate. Counts of triplets and queries are *per category*.

    ``reuse_reference``: chance that a training triplet's reference is an earlier training image (as in
    FashionIQ, where images recur across triplets). ``distractors``: chance that an evaluation query also
    brings one unrelated gallery item. ``large``'s evaluation splits are 5x (not 10x) ``default``'s because
    attribute tuples must stay unique within a gallery (~5.7 items per query) and there are 4,320 per category.
    ``vocabulary``: ``"extended"`` adds colours and a sleeve length (8,640 tuples per category), which is
    what lets the ``ablation`` size hold 1,000 evaluation queries per category.
    """

    train_triplets: int
    val_queries: int
    test_queries: int
    stage1_train: int
    stage1_val: int
    reuse_reference: float = 0.35
    distractors: float = 0.2
    vocabulary: str = "base"


SIZES: dict[str, SynthSize] = {
    "tiny": SynthSize(train_triplets=24, val_queries=20, test_queries=8, stage1_train=48, stage1_val=16),
    "small": SynthSize(train_triplets=400, val_queries=40, test_queries=8, stage1_train=48, stage1_val=16),
    "default": SynthSize(train_triplets=600, val_queries=100, test_queries=50, stage1_train=4000, stage1_val=400),
    "large": SynthSize(train_triplets=6000, val_queries=500, test_queries=250, stage1_train=40000, stage1_val=2000),
    "ablation": SynthSize(
        train_triplets=600, val_queries=1000, test_queries=50, stage1_train=4000, stage1_val=400, vocabulary="extended"
    ),
}


def _size_params(size: SynthSize) -> dict[str, Any]:
    """``size_params`` of ``synthetic.json``. ``vocabulary`` is left out (it gets its own key when not
    ``base``) so that the files of the sizes that existed before it stay byte-identical."""
    params = asdict(size)
    del params["vocabulary"]
    return params


class SyntheticOutputError(DataError):
    """The output directory holds something ``generate`` must not touch, or a damaged synthetic dataset."""


# --------------------------------------------------------------------------------------------- scenarios
SCENARIOS = ("edit", "text-led", "image-led")
MIXED = "mixed"
Mix = dict[str, float]


def parse_scenarios(spec: str | Mapping[str, float]) -> Mix:
    """The scenario mix as ``{scenario: proportion}`` (proportions > 0, summing to 1, in ``SCENARIOS`` order).

    ``spec`` is a scenario name (``"edit"``, the default benchmark, ``"text-led"``, ``"image-led"``),
    ``"mixed"`` (a third each), proportions such as ``"edit=0.4,text-led=0.3,image-led=0.3"``, or a mapping.

    - ``edit``: 2-3 attributes change, stated across the two captions; both modalities are needed.
    - ``text-led``: 4-5 of the 6 attributes change and the captions describe the target (5-6 attributes):
      the text nearly identifies it, the reference image mostly misleads.
    - ``image-led``: one attribute changes and both captions state only it; the gallery holds near-duplicates
      of the target that differ from it in unstated attributes, so the reference image carries most of it.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text == MIXED:
            return {name: 1.0 / len(SCENARIOS) for name in SCENARIOS}
        if text in SCENARIOS:
            return {text: 1.0}
        pairs: dict[str, float] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(
                    f"scenarios {spec!r}: {part.strip()!r} is neither a scenario ({', '.join(SCENARIOS)}), "
                    f"{MIXED!r}, nor name=proportion"
                )
            if name in pairs:
                raise ValueError(f"scenarios {spec!r}: {name!r} is given twice")
            try:
                pairs[name] = float(value)
            except ValueError:
                raise ValueError(f"scenarios {spec!r}: proportion {value.strip()!r} of {name!r} is not a number") from None
        spec = pairs
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"scenarios must be a name or a non-empty mapping of proportions, got {spec!r}")
    unknown = [name for name in spec if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; expected {', '.join(SCENARIOS)} (or {MIXED!r})")
    for name, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"scenario {name!r}: proportion must be a number >= 0, got {value!r}")
    total = sum(spec.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"scenario proportions must sum to 1, got {total:g} ({dict(spec)})")
    return {name: float(spec[name]) for name in SCENARIOS if spec.get(name, 0) > 0}


def _is_edit_only(mix: Mix) -> bool:
    return set(mix) == {"edit"}


def scenario_counts(n: int, mix: Mix) -> dict[str, int]:
    """``n`` triplets shared out by the mix, largest remainders first (exact proportions, summing to ``n``)."""
    exact = {name: n * p for name, p in mix.items()}
    counts = {name: int(math.floor(v)) for name, v in exact.items()}
    order = sorted(mix, key=lambda name: (-(exact[name] - counts[name]), SCENARIOS.index(name)))
    for name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def query_scenarios(meta: Mapping[str, Any], category: str, split: str) -> list[str]:
    """The scenario of each entry of ``captions/cap.{category}.{split}.json``, in file order.

    ``meta`` is the content of ``synthetic.json`` (:func:`read_metadata`). A dataset written without a
    scenario mix (every ``edit`` benchmark, so that those files stay as they were) records none: all its
    entries are ``edit``. ``split`` is a file split (``train``, ``val``, ``test``); FashionIQ-style
    evaluation reads the ``val`` files.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown synthetic category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {', '.join(SPLITS)}")
    try:
        entries = meta["triplets"][category][split]
    except (KeyError, TypeError):
        raise SyntheticOutputError(f"{META_FILE}: no 'triplets' -> {category!r} -> {split!r}") from None
    if "scenarios" not in meta:
        return ["edit"] * len(entries)
    out = []
    for i, entry in enumerate(entries):
        scenario = entry.get("scenario") if isinstance(entry, dict) else None
        if scenario not in SCENARIOS:
            raise SyntheticOutputError(
                f"{META_FILE}: triplets -> {category} -> {split} entry {i}: scenario {scenario!r} is not one of "
                f"{', '.join(SCENARIOS)}"
            )
        out.append(scenario)
    return out


# --------------------------------------------------------------------------------------------- metadata
Attrs = dict[str, str]


@dataclass
class _Builder:
    """Accumulates the dataset's metadata from one RNG stream (no files are written here).

    With the ``edit``-only mix every RNG draw is the one the first version of this generator made, in the
    same order, so those datasets stay byte-identical.
    """

    rng: random.Random
    size: SynthSize
    mix: Mix = field(default_factory=lambda: {"edit": 1.0})

    def __post_init__(self) -> None:
        self.ids: set[str] = set()
        self.garments: dict[str, dict[str, Any]] = {}
        self.triplets: dict[str, dict[str, list[dict[str, Any]]]] = {c: {s: [] for s in SPLITS} for c in CATEGORIES}
        self.splits: dict[str, dict[str, list[str]]] = {c: {s: [] for s in SPLITS} for c in CATEGORIES}
        self.values = {c: attribute_values(c, self.size.vocabulary) for c in CATEGORIES}
        self.record_scenarios = not _is_edit_only(self.mix)

    def new_id(self) -> str:
        """A FashionIQ-ASIN-like id ("S" + 9 upper-case alphanumerics), unique across categories."""
        alphabet = string.ascii_uppercase + string.digits
        while True:
            candidate = "S" + "".join(self.rng.choice(alphabet) for _ in range(9))
            if candidate not in self.ids:
                self.ids.add(candidate)
                return candidate

    def add(self, category: str, split: str, attrs: Attrs) -> str:
        image_id = self.new_id()
        self.garments[image_id] = {"category": category, "split": split, "attributes": dict(attrs)}
        self.splits[category][split].append(image_id)
        return image_id

    def random_attrs(self, category: str) -> Attrs:
        return {name: self.rng.choice(values) for name, values in self.values[category].items()}

    def scenario_labels(self, n: int) -> list[str]:
        """One scenario per triplet of a split, in exact proportions and random order (no draw for ``edit``)."""
        if not self.record_scenarios:
            return ["edit"] * n
        labels = [name for name, count in scenario_counts(n, self.mix).items() for _ in range(count)]
        self.rng.shuffle(labels)
        return labels

    def changes(self, category: str, reference: Attrs) -> dict[str, str]:
        """2 or 3 attributes of the reference, each given a different value."""
        values = self.values[category]
        names = self.rng.sample(list(values), self.rng.choice((2, 3)))
        return {
            n: self.rng.choice([v for v in values[n] if v != reference[n]])
            for n in sorted(names, key=list(values).index)
        }

    def scenario_change(self, category: str, scenario: str, reference: Attrs) -> tuple[dict[str, str], dict[str, str]]:
        """``(changes, stated)``: the attributes the target changes, and the target values the captions state."""
        if scenario == "edit":
            change = self.changes(category, reference)
            return change, change
        values = self.values[category]
        count = 1 if scenario == "image-led" else self.rng.choice((4, 5))  # text-led: most attributes differ
        names = sorted(self.rng.sample(list(values), count), key=ATTRIBUTES.index)
        change = {n: self.rng.choice([v for v in values[n] if v != reference[n]]) for n in names}
        if scenario == "image-led":
            return change, dict(change)
        kept = [n for n in ATTRIBUTES if n not in change]
        described = set(change) | set(self.rng.sample(kept, self.rng.choice((5, 6)) - count))
        target = {**reference, **change}
        return change, {n: target[n] for n in ATTRIBUTES if n in described}

    def captions(self, changes: dict[str, str]) -> tuple[list[str], list[list[str]]]:
        """Two captions stating disjoint parts of the change, and which attributes each one states."""
        names = list(changes)
        self.rng.shuffle(names)
        cut = 1 if len(names) == 2 else self.rng.choice((1, 2))
        parts = [names[:cut], names[cut:]]
        self.rng.shuffle(parts)
        return [self._caption(p, changes) for p in parts], [sorted(p, key=ATTRIBUTES.index) for p in parts]

    def description_captions(self, stated: dict[str, str]) -> tuple[list[str], list[list[str]]]:
        """``text-led``: the 5-6 stated attributes of the target, shared between two captions (3 + 2 or 3 + 3)."""
        names = list(stated)
        self.rng.shuffle(names)
        parts = [names[:3], names[3:]]
        self.rng.shuffle(parts)
        return [self._list_caption(p, stated) for p in parts], [sorted(p, key=ATTRIBUTES.index) for p in parts]

    def paraphrases(self, change: dict[str, str]) -> tuple[list[str], list[list[str]]]:
        """``image-led``: one change, stated by both captions in two different phrasings."""
        ((name, value),) = change.items()
        forms = list(_COLOR_CLAUSES) if name == "color" else list(_PHRASES[(name, value)][0])
        first, second = (f.format(value) for f in self.rng.sample(forms, 2))
        return [first, second], [[name], [name]]

    def _caption(self, names: list[str], changes: dict[str, str]) -> str:
        first = self._clause(names[0], changes[names[0]])
        if len(names) == 1:
            return first
        name, value = names[1], changes[names[1]]
        if self.rng.random() < 0.5:
            return f"{first} and {self._clause(name, value)}"
        tail = f"in {value}" if name == "color" else self.rng.choice(_PHRASES[(name, value)][1])
        return f"{first} {tail}"

    def _list_caption(self, names: list[str], values: dict[str, str]) -> str:
        """A clause, then the other attributes as short tails: "is red with long sleeves and a collar"."""
        first = self._clause(names[0], values[names[0]])
        # Negated tails ("without sleeves") go last, so that "and" cannot seem to negate another attribute.
        tails = sorted((self._tail(n, values[n]) for n in names[1:]), key=lambda t: t.startswith(("without", "with no")))
        if len(tails) < 2:
            return " ".join([first, *tails])
        return f"{first} {', '.join(tails[:-1])} and {tails[-1].removeprefix('with ')}"

    def _tail(self, name: str, value: str) -> str:
        return f"in {value}" if name == "color" else self.rng.choice(_PHRASES[(name, value)][1])

    def _clause(self, name: str, value: str) -> str:
        if name == "color":
            return self.rng.choice(_COLOR_CLAUSES).format(value)
        return self.rng.choice(_PHRASES[(name, value)][0])

    def train_split(self, category: str) -> None:
        pool: list[str] = []
        for scenario in self.scenario_labels(self.size.train_triplets):
            if pool and self.rng.random() < self.size.reuse_reference:
                ref_id = self.rng.choice(pool)
            else:
                ref_id = self.add(category, "train", self.random_attrs(category))
                pool.append(ref_id)
            reference = self.garments[ref_id]["attributes"]
            change, stated = self.scenario_change(category, scenario, reference)
            target_id = self.add(category, "train", {**reference, **change})
            pool.append(target_id)
            self._record(category, "train", ref_id, target_id, change, scenario, stated)

    def eval_split(self, category: str, split: str, n_queries: int) -> None:
        """Queries whose gallery holds unique attribute tuples and, per scenario, the items that make it hard.

        - ``edit``: two partial edits and near-duplicates of the target and the reference (one unstated
          attribute changed): text alone, image alone and their sum all tie the target with something.
        - ``text-led``: near-duplicates of the reference (they mislead the image) and, when the captions
          leave one attribute unstated, the target with that attribute changed (it ties for the text alone).
        - ``image-led``: near-duplicates of the target in unstated attributes (they tie for the text alone)
          and one of the reference.
        """
        used: set[tuple[str, ...]] = set()
        values = self.values[category]

        def key(attrs: Attrs) -> tuple[str, ...]:
            return tuple(attrs[n] for n in values)

        def try_add(attrs: Attrs) -> str | None:
            if key(attrs) in used:
                return None  # an identical item is already in the gallery and plays this item's role
            used.add(key(attrs))
            return self.add(category, split, attrs)

        def one_off(attrs: Attrs, avoid: Sequence[str]) -> Attrs:
            name = self.rng.choice([n for n in values if n not in avoid])
            return {**attrs, name: self.rng.choice([v for v in values[name] if v != attrs[name]])}

        capacity = math.prod(len(v) for v in values.values())
        if n_queries * 6 > capacity:
            raise ValueError(f"{category} {split}: {n_queries} queries need more than the {capacity} attribute tuples")
        for scenario in self.scenario_labels(n_queries):
            reference = self.random_attrs(category)
            while key(reference) in used:
                reference = self.random_attrs(category)
            while True:
                change, stated = self.scenario_change(category, scenario, reference)
                target = {**reference, **change}
                if key(target) not in used:
                    break
            ref_id, target_id = try_add(reference), try_add(target)
            assert ref_id is not None and target_id is not None
            if scenario == "edit":
                # Two partial edits: the reference with non-empty proper subsets of the stated changes. They tie
                # with the target when image and text evidence are merely added, as a fixed-sum fusion does.
                names = list(change)
                subsets = [c for r in range(1, len(names)) for c in itertools.combinations(names, r)]
                for subset in self.rng.sample(subsets, 2):
                    try_add({**reference, **{n: change[n] for n in subset}})
                try_add(one_off(target, avoid=list(change)))  # the target, one unstated attribute changed
                if self.rng.random() < 0.5:
                    try_add(one_off(reference, avoid=list(change)))  # the reference, one unstated attribute changed
            elif scenario == "text-led":
                unstated = [n for n in values if n not in stated]
                # The target with its unstated attribute changed (the text alone cannot tell them apart), or
                # with a stated one changed when all six are stated.
                try_add(one_off(target, avoid=[n for n in values if n not in unstated] if unstated else []))
                for _ in range(2):
                    try_add(one_off(reference, avoid=list(change)))  # near-duplicates of the misleading reference
            else:  # image-led
                for _ in range(2):
                    try_add(one_off(target, avoid=list(change)))  # match the text, differ from the reference
                try_add(one_off(reference, avoid=list(change)))
            if self.rng.random() < self.size.distractors:
                try_add(self.random_attrs(category))
            self._record(category, split, ref_id, target_id, change, scenario, stated)
        self.rng.shuffle(self.splits[category][split])  # gallery order must not reveal which items belong together

    def _record(
        self, category: str, split: str, ref_id: str, target_id: str, change: dict[str, str], scenario: str,
        stated: dict[str, str],
    ) -> None:  # fmt: skip
        if scenario == "edit":
            captions, per_caption = self.captions(change)
        elif scenario == "text-led":
            captions, per_caption = self.description_captions(stated)
        else:
            captions, per_caption = self.paraphrases(change)
        entry: dict[str, Any] = {
            "candidate": ref_id,
            "target": target_id,
            "captions": captions,
            "changes": change,
            "caption_changes": per_caption,
        }
        if self.record_scenarios:
            entry["scenario"] = scenario
            entry["stated"] = stated
        self.triplets[category][split].append(entry)


def _description(category: str, attrs: Attrs, rng: random.Random) -> str:
    """A product description naming all six attributes, in one of a few phrasings."""
    noun = rng.choice(_NOUNS[category])
    color, pattern = attrs["color"], rng.choice(_DESC_PATTERN[attrs["pattern"]])
    sleeves, neck = _DESC_SLEEVES[attrs["sleeves"]], _DESC_NECK[attrs["neckline"]]
    length, fit = _DESC_LENGTH[attrs["length"]], attrs["fit"]
    templates = (
        f"a {color} {pattern} {noun} with {sleeves} and a {neck}, {length}, {fit}",
        f"{fit} {pattern} {color} {noun}, {length}, with a {neck} and {sleeves}",
        f"this {noun} is {color} and {pattern}, {fit}, {length}, with {sleeves} and a {neck}",
        f"a {length} {fit} {noun} in {color}, {pattern}, {sleeves}, {neck}",
    )
    return rng.choice(templates)


def _scene(rng: random.Random, colors: Sequence[str] = tuple(COLORS)) -> tuple[list[dict[str, str]], str]:
    """1-3 shapes in distinct columns, and a caption naming each one's size, colour, pattern and place."""
    columns = sorted(rng.sample(range(3), rng.randint(1, 3)))
    shapes = [
        {
            "shape": rng.choice(SHAPES),
            "color": rng.choice(colors),
            "pattern": rng.choice(PATTERNS),
            "size": rng.choice(("small", "large")),
            "position": _COLUMNS[c],
        }
        for c in columns
    ]
    phrases = [
        f"a {s['size']} {s['color']} {rng.choice(_SCENE_PATTERN[s['pattern']])}{s['shape']} {s['position']}"
        for s in shapes
    ]
    rng.shuffle(phrases)
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    caption = rng.choice(("{}", "a picture of {}", "there is {}", "an image with {}")).format(body)
    return shapes, caption


# --------------------------------------------------------------------------------------------- drawing
def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (45, 40, 60) if luminance > 150 else (236, 236, 228)


def _jitter_color(rgb: tuple[int, int, int], rng: random.Random, amount: int = 10) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)
    return (r, g, b)


def _texture(size: int, pattern: str, base: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """A full-canvas fill of ``pattern``; the phase is random so the pattern does not sit at fixed pixels."""
    tex = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(tex)
    ink = _contrast(base)
    period = 10 * _SCALE
    ox, oy = rng.randrange(period), rng.randrange(period)
    if pattern == "striped":
        for y in range(-period + oy, size, period):
            draw.rectangle((0, y, size, y + period // 3), fill=ink)
    elif pattern == "vertical-striped":
        for x in range(-period + ox, size, period):
            draw.rectangle((x, 0, x + period // 3, size), fill=ink)
    elif pattern == "dotted":
        r = period // 4
        for row, y in enumerate(range(-period + oy, size + period, period)):
            shift = period // 2 if row % 2 else 0
            for x in range(-period + ox + shift, size + period, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    elif pattern == "checked":
        w = period // 4
        for y in range(-period + oy, size, period):
            draw.rectangle((0, y, size, y + w), fill=ink)
        for x in range(-period + ox, size, period):
            draw.rectangle((x, 0, x + w, size), fill=ink)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}")
    return tex


def _background(rng: random.Random, size: int) -> Image.Image:
    """A plain studio background of varying shade and tint (a nuisance, like real product photos)."""
    gray = rng.randint(150, 212)
    return Image.new("RGB", (size, size), tuple(min(255, max(0, gray + rng.randint(-10, 10))) for _ in range(3)))


def _outline(img: Image.Image, mask: Image.Image, color: tuple[int, int, int]) -> None:
    """Darken a thin ring around ``mask`` so that light garments stand out on light backgrounds."""
    outside = Image.eval(mask, lambda v: 255 - v)
    ring = Image.composite(mask.filter(ImageFilter.MaxFilter(3)), Image.new("L", mask.size, 0), outside)
    img.paste(color, mask=ring)


def render_garment(category: str, attrs: Attrs, rng: random.Random) -> Image.Image:
    """Draw one garment as a 64x64 RGB image. ``rng`` supplies only nuisance variation (placement, shades)."""
    s = IMAGE_SIZE * _SCALE
    k = _SCALE
    img = _background(rng, s)
    base = _jitter_color(PALETTE[attrs["color"]], rng)
    cx = s // 2 + rng.randint(-3 * k, 3 * k)
    y0 = 8 * k + rng.randint(-2 * k, 2 * k)  # shoulder line
    shoulder, waist, hem_w = {"fitted": (10, 7, 8), "straight": (11, 10, 10), "loose": (12, 13, 15)}[attrs["fit"]]
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    if category == "dress":
        waist_y = y0 + 20 * k
        hem_y = y0 + {"mini": 35, "knee": 44, "maxi": 53}[attrs["length"]] * k
        skirt = {"fitted": 10, "straight": 13, "loose": 20}[attrs["fit"]]
        body = [(cx - shoulder * k, y0), (cx + shoulder * k, y0), (cx + waist * k, waist_y), (cx + skirt * k, hem_y),
                (cx - skirt * k, hem_y), (cx - waist * k, waist_y)]  # fmt: skip
    else:
        hem_y = y0 + {"cropped": 20, "hip": 31, "tunic": 40}[attrs["length"]] * k
        mid_y = y0 + 14 * k
        body = [(cx - shoulder * k, y0), (cx + shoulder * k, y0), (cx + waist * k, mid_y), (cx + hem_w * k, hem_y),
                (cx - hem_w * k, hem_y), (cx - waist * k, mid_y)]  # fmt: skip
    draw.polygon(body, fill=255)
    sleeve_len = {"sleeveless": 0, "short": 9, "three-quarter": 17, "long": 26}[attrs["sleeves"]] * k
    if sleeve_len:
        for side in (-1, 1):
            ax, ay = cx + side * (shoulder - 1) * k, y0
            angle = math.radians(28)
            ex, ey = ax + side * math.sin(angle) * sleeve_len, ay + 3 * k + math.cos(angle) * sleeve_len
            half = 3 * k
            nx, ny = math.cos(angle) * half, -side * math.sin(angle) * half
            draw.polygon([(ax, ay), (ax - side * 2 * k, ay + 7 * k), (ex - nx, ey - ny), (ex + nx, ey + ny)], fill=255)
    neck = attrs["neckline"]
    if neck == "turtleneck":
        draw.rectangle((cx - 4 * k, y0 - 5 * k, cx + 4 * k, y0 + 1), fill=255)
    elif neck == "v-neck":
        draw.polygon([(cx - 5 * k, y0 - 1), (cx + 5 * k, y0 - 1), (cx, y0 + 8 * k)], fill=0)
    else:  # crew and collar: a round opening
        draw.ellipse((cx - 5 * k, y0 - 4 * k, cx + 5 * k, y0 + 4 * k), fill=0)
    img.paste(_texture(s, attrs["pattern"], base, rng), mask=mask)
    dark = tuple(int(c * 0.55) for c in base)
    _outline(img, mask, dark)
    pen = ImageDraw.Draw(img)
    if neck == "collar":  # two flaps in a contrasting colour
        flap = _contrast(base)
        for side in (-1, 1):
            pen.polygon([(cx + side * 6 * k, y0 - 1), (cx + side * 1 * k, y0 + 2 * k), (cx + side * 2 * k, y0 + 7 * k)],
                        fill=flap, outline=dark)  # fmt: skip
    if neck == "turtleneck":
        pen.line((cx - 4 * k, y0 + 1, cx + 4 * k, y0 + 1), fill=dark, width=k)
    if category == "shirt":  # a button placket tells shirts from tops
        top = y0 + (8 * k if neck == "v-neck" else 4 * k)
        pen.line((cx, top, cx, hem_y - 2 * k), fill=dark, width=k)
        for y in range(top + 3 * k, hem_y - 3 * k, 6 * k):
            pen.ellipse((cx - 1.5 * k, y - 1.5 * k, cx + 1.5 * k, y + 1.5 * k), fill=_contrast(dark))
    elif category == "dress":  # a waist seam
        pen.line((cx - waist * k, waist_y, cx + waist * k, waist_y), fill=dark, width=k)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def _shape_mask(size: int, shape: str, x: float, y: float, r: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "square":
        draw.rectangle((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=255)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=255)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)], fill=255)
    elif shape == "star":
        points = [
            (
                x + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                y - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def render_scene(shapes: Sequence[dict[str, str]], rng: random.Random) -> Image.Image:
    """Draw a Stage I scene: a two-tone gradient backdrop (unlike the garments' studio grey) and its shapes."""
    s = IMAGE_SIZE * _SCALE
    top = tuple(rng.randint(70, 170) for _ in range(3))
    bottom = tuple(rng.randint(70, 170) for _ in range(3))
    img = Image.linear_gradient("L").resize((s, s))
    img = Image.composite(Image.new("RGB", (s, s), bottom), Image.new("RGB", (s, s), top), img)
    for shape in shapes:
        column = _COLUMNS.index(shape["position"])
        r = (9 if shape["size"] == "small" else 15) * _SCALE + rng.randint(-_SCALE, _SCALE)
        x = (11 + 21 * column) * _SCALE + rng.randint(-2 * _SCALE, 2 * _SCALE)
        y = rng.randint(r + 2, s - r - 2)
        base = _jitter_color(PALETTE[shape["color"]], rng)
        mask = _shape_mask(s, shape["shape"], x, y, r)
        img.paste(_texture(s, shape["pattern"], base, rng), mask=mask)
        _outline(img, mask, tuple(int(c * 0.55) for c in base))
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------- files
def _image_rng(seed: int, name: str) -> random.Random:
    """Each image's own RNG: seeding with a string is stable across runs and Python hash seeds."""
    return random.Random(f"{GENERATOR}:{VERSION}:{seed}:{name}")


def _build(seed: int, size_name: str, mix: Mix | None = None) -> dict[str, Any]:
    """All metadata of the dataset: garments, triplets, splits, scenes and texts.

    ``vocabulary`` and ``scenarios`` are recorded only when they are not the first version's (``base``,
    ``edit`` only), so that the files of those datasets stay byte-identical.
    """
    size = SIZES[size_name]
    mix = mix or {"edit": 1.0}
    builder = _Builder(random.Random(seed), size, mix)
    for category in CATEGORIES:
        builder.train_split(category)
        builder.eval_split(category, "val", size.val_queries)
        builder.eval_split(category, "test", size.test_queries)
    scenes: dict[str, dict[str, Any]] = {}
    scene_rng = random.Random(f"{GENERATOR}:scenes:{seed}")
    for split, count in (("train", size.stage1_train), ("val", size.stage1_val)):
        for i in range(count):
            shapes, caption = _scene(scene_rng, builder.values[CATEGORIES[0]]["color"])
            scenes[f"stage1/images/{split}_{i:06d}.png"] = {"split": split, "shapes": shapes, "text": caption}
    descriptions = {
        image_id: _description(g["category"], g["attributes"], _image_rng(seed, f"description:{image_id}"))
        for image_id, g in builder.garments.items()
    }
    meta: dict[str, Any] = {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "size": size_name,
        "size_params": _size_params(size),
    }
    if size.vocabulary != "base":
        meta["vocabulary"] = size.vocabulary
    if not _is_edit_only(mix):
        meta["scenarios"] = dict(mix)
    meta.update(
        image_size=IMAGE_SIZE,
        attributes={c: {n: list(v) for n, v in builder.values[c].items()} for c in CATEGORIES},
        garments=builder.garments,
        descriptions=descriptions,
        triplets=builder.triplets,
        splits=builder.splits,
        scenes=scenes,
    )
    return meta


def expected_files(meta: dict[str, Any]) -> list[str]:
    """Every file (relative POSIX path) that the dataset described by ``meta`` consists of."""
    files = [META_FILE, "stage1/pairs.jsonl", "stage2/descriptions.jsonl"]
    for category in CATEGORIES:
        for split in SPLITS:
            files += [f"captions/cap.{category}.{split}.json", f"image_splits/split.{category}.{split}.json"]
    files += [f"images/{image_id}.png" for image_id in meta["garments"]]
    files += list(meta["scenes"])
    return files


def _write_json(path: Path, data: Any, compact: bool = False) -> None:
    """Indented like the official FashionIQ files; ``compact`` for the (large) metadata file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=4)
    path.write_text(text + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: Iterator[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _write(root: Path, meta: dict[str, Any], progress: bool) -> None:
    """Write every file of ``meta`` under ``root``; ``synthetic.json`` last, so its presence means complete."""
    seed = meta["seed"]
    for category in CATEGORIES:
        for split in SPLITS:
            entries = []
            for t in meta["triplets"][category][split]:
                entry = {"target": t["target"], "candidate": t["candidate"], "captions": t["captions"]}
                if split == "test":
                    del entry["target"]  # the official test files withhold targets
                entries.append(entry)
            _write_json(root / f"captions/cap.{category}.{split}.json", entries)
            _write_json(root / f"image_splits/split.{category}.{split}.json", meta["splits"][category][split])
    _write_jsonl(
        root / "stage1/pairs.jsonl",
        ({"image": name, "text": s["text"], "split": s["split"]} for name, s in meta["scenes"].items()),
    )
    _write_jsonl(
        root / "stage2/descriptions.jsonl",
        (
            {"image": f"images/{image_id}.png", "text": meta["descriptions"][image_id], "split": g["split"]}
            for image_id, g in meta["garments"].items()
        ),
    )
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "stage1/images").mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Any]] = [(f"images/{i}.png", g) for i, g in meta["garments"].items()]
    jobs += list(meta["scenes"].items())
    for name, item in _track(jobs, progress, "drawing images"):
        rng = _image_rng(seed, name)
        if name.startswith("images/"):
            img = render_garment(item["category"], item["attributes"], rng)
        else:
            img = render_scene(item["shapes"], rng)
        img.save(root / name, format="PNG")
    _write_json(root / META_FILE, meta, compact=True)


def _track(items: list[Any], progress: bool, what: str) -> Iterator[Any]:
    if not progress:
        yield from items
        return
    from rich.progress import track  # imported lazily: the module stays import-light and side-effect free

    yield from track(items, description=what, transient=True)


# --------------------------------------------------------------------------------------------- output safety
def _read_meta(root: Path) -> dict[str, Any] | None:
    """The metadata of a synthetic dataset at ``root``, ``None`` if there is no ``synthetic.json``."""
    path = root / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SyntheticOutputError(
            f"{path}: unreadable synthetic-dataset metadata ({err}); not touching {root}"
        ) from err
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        raise SyntheticOutputError(f"{path}: not written by {GENERATOR}; not touching {root}")
    for key, kind in (("seed", int), ("size", str), ("version", int), ("garments", dict), ("scenes", dict)):
        if not isinstance(meta.get(key), kind):
            raise SyntheticOutputError(
                f"{path}: metadata key {key!r} missing or not {kind.__name__}; not touching {root}"
            )
    if "scenarios" in meta:
        try:
            parse_scenarios(meta["scenarios"])
        except ValueError as err:
            raise SyntheticOutputError(f"{path}: metadata key 'scenarios': {err}; not touching {root}") from err
    return meta


def read_metadata(root: str | Path) -> dict[str, Any]:
    """The content of ``root/synthetic.json`` (checked), e.g. for :func:`query_scenarios`."""
    meta = _read_meta(Path(root))
    if meta is None:
        raise FileNotFoundError(f"{Path(root) / META_FILE}: no synthetic dataset here")
    return meta


def mix_of(meta: Mapping[str, Any]) -> Mix:
    """The scenario mix a dataset was written with (``synthetic.json``; none recorded: ``edit`` only)."""
    return parse_scenarios(meta.get("scenarios", "edit"))


def _describe(seed: int, size: str, mix: Mix) -> str:
    text = f"seed={seed}, size={size!r}"
    return text if _is_edit_only(mix) else f"{text}, scenarios={format_scenarios(mix)}"


def format_scenarios(mix: Mix) -> str:
    """``edit``, ``mixed`` or ``edit=0.4,text-led=0.3,image-led=0.3``: the ``--scenarios`` spelling of a mix,
    which :func:`parse_scenarios` reads back as the same mix."""
    if _is_edit_only(mix):
        return "edit"
    if mix == parse_scenarios(MIXED):
        return MIXED
    return ",".join(f"{name}={p:.12g}" for name, p in mix.items())


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


def _inside(root: Path, name: str) -> bool:
    """Whether ``root / name`` is a plain relative path that stays inside ``root`` (symbolic links followed)."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return False
    return (root / relative).resolve().is_relative_to(root.resolve())


def _check_own_files(root: Path, meta: dict[str, Any], files: Sequence[str]) -> None:
    """Refuse to delete unless every file the metadata lists is one this generator writes for its seed, size
    and scenario mix (its own list, rebuilt), and lies inside ``root``: a tampered ``synthetic.json`` cannot make
    ``--overwrite`` delete anything else."""
    if meta["size"] not in SIZES or meta["version"] != VERSION:
        raise SyntheticOutputError(
            f"{root / META_FILE}: written by generator version {meta['version']} (size {meta['size']!r}); this is "
            f"version {VERSION}, which cannot rebuild that file list to check it; refusing to delete anything in "
            f"{root} (remove the folder yourself, or choose another --out)"
        )
    own = set(expected_files(_build(meta["seed"], meta["size"], mix_of(meta))))
    strays = [f for f in files if f not in own or not _inside(root, f)]
    if strays:
        shown = ", ".join(repr(f) for f in strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
        raise SyntheticOutputError(
            f"{root / META_FILE} lists files that this generator did not write for seed={meta['seed']}, "
            f"size={meta['size']!r}, version={meta['version']} ({shown}); refusing to delete anything in {root}"
        )


def _remove_dataset(root: Path, files: Sequence[str]) -> None:
    """Delete exactly the given files and then the directories they leave empty (never anything else)."""
    outside = [name for name in files if not _inside(root, name)]
    if outside:
        raise SyntheticOutputError(f"refusing to delete {outside[0]!r}: not inside {root}")
    for name in files:
        (root / name).unlink(missing_ok=True)
    for sub in ("images", "stage1/images", "stage1", "stage2", "captions", "image_splits"):
        directory = root / sub
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def generate(
    out: str | Path,
    seed: int = 0,
    size: str = "default",
    overwrite: bool = False,
    *,
    progress: bool = False,
    scenarios: str | Mapping[str, float] = "edit",
) -> Path:
    """Write the synthetic dataset for ``seed``, ``size`` and ``scenarios`` to ``out`` and return ``out``.

    ``scenarios`` (see :func:`parse_scenarios`): ``"edit"`` (default, the files of the first version),
    ``"mixed"`` or proportions such as ``"edit=0.4,text-led=0.3,image-led=0.3"``.

    - ``out`` missing or empty: the dataset is built in a temporary sibling directory and moved into place,
      so an interrupted run never leaves a half-written dataset behind.
    - ``out`` already holds this seed, size, scenario mix and generator version, complete: returned at once.
    - ``out`` holds another synthetic dataset: an error, unless ``overwrite``; then the old dataset's files
      (and only those) are replaced. Files that are not part of it block the overwrite.
    - ``out`` holds anything else: an error; ``overwrite`` never deletes data this module did not write.
    """
    if size not in SIZES:
        raise ValueError(f"unknown synthetic size {size!r}; expected one of {sorted(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    mix = parse_scenarios(scenarios)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise SyntheticOutputError(f"{root}: exists and is not a directory")
    old_files: list[str] = []
    if root.is_dir() and any(root.iterdir()):
        meta = _read_meta(root)
        if meta is None:
            raise SyntheticOutputError(
                f"{root}: directory is not empty and holds no {META_FILE}; refusing to write a synthetic dataset "
                "into it (choose an empty or new directory)"
            )
        old_files = expected_files(meta)
        missing = [f for f in old_files if not (root / f).is_file()]
        theirs = mix_of(meta)
        same = (meta["seed"], meta["size"], meta["version"], theirs) == (seed, size, VERSION, mix)
        stale = same and meta.get("size_params") != _size_params(SIZES[size])  # a size redefined since
        same = same and not stale
        if same and not missing:
            return root
        if not overwrite:
            if same:
                raise SyntheticOutputError(
                    f"{root}: synthetic dataset ({_describe(seed, size, mix)}) is incomplete, {len(missing)} files "
                    f"missing (first: {missing[0]}); pass overwrite=True (--overwrite) to regenerate it"
                )
            if stale:
                raise SyntheticOutputError(
                    f"{root}: its size {size!r} was written with other parameters ({meta.get('size_params')}) than "
                    f"this version's ({_size_params(SIZES[size])}); pass overwrite=True (--overwrite) to replace it"
                )
            raise SyntheticOutputError(
                f"{root}: holds a synthetic dataset with {_describe(meta['seed'], meta['size'], theirs)}, "
                f"version={meta['version']}, not {_describe(seed, size, mix)}, version={VERSION}; "
                "pass overwrite=True (--overwrite) to replace it"
            )
        _check_own_files(root, meta, old_files)
        foreign = sorted(_files_under(root) - set(old_files))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SyntheticOutputError(
                f"{root}: holds files that are not part of its synthetic dataset ({shown}); refusing to overwrite"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write(tmp, _build(seed, size, mix), progress)
        if root.exists():
            # Swap by two renames, then delete the old files: a run stopped at any point leaves the old
            # dataset whole (in ``root``, or in the ``.old-`` sibling), never half deleted.
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old)
            try:
                os.replace(tmp, root)
            except BaseException:
                os.replace(old, root)  # put the old dataset back where it was
                raise
            _remove_dataset(old, old_files)
            old.rmdir()
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # our own temporary directory: an interrupted or failed run leaves nothing
    return root


# --------------------------------------------------------------------------------------------- CLI
def synth_main(argv: list[str] | None = None) -> int:
    """``ctiir synth --out DIR [--seed N] [--size S] [--scenarios MIX] [--overwrite=true] [--progress_bar=false]``.

    jsonargparse is imported here, not at module level: this module stays import-light (``ctiir.cliargs``).
    """
    from ctiir.cliargs import EXIT_USAGE, add_progress_bar, command_parser, run_command

    parser = command_parser(
        "synth", "Write the embedded synthetic composed-retrieval benchmark (FashionIQ layout + Stage I/II text)."
    )
    parser.add_argument("--out", type=str, required=True, help="output directory (new, empty, or a previous synthetic dataset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed and size give identical files")
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="dataset size")
    parser.add_argument(
        "--scenarios",
        type=str,
        default="edit",
        help="retrieval scenarios: edit (2-3 attributes change, both modalities needed), mixed (a third each of edit, "
        "text-led and image-led), or proportions such as edit=0.4,text-led=0.3,image-led=0.3",
    )
    parser.add_argument(
        "--overwrite", type=bool, default=False, help="replace a previous synthetic dataset of another seed/size (--overwrite=true)"
    )
    add_progress_bar(parser, "a progress bar while images are drawn")

    def synth(args: Any) -> int:
        try:
            mix = parse_scenarios(args.scenarios)
        except ValueError as err:
            print(f"ctiir synth: error: --scenarios: {err}", file=sys.stderr)
            return EXIT_USAGE
        try:
            root = generate(
                args.out, seed=args.seed, size=args.size, overwrite=args.overwrite, progress=args.progress_bar, scenarios=mix
            )
        except SyntheticOutputError as err:
            print(f"ctiir synth: error: {err}", file=sys.stderr)
            if "overwrite" in str(err):
                print("(on this command: --overwrite=true)", file=sys.stderr)
            return EXIT_USAGE
        meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
        queries = {s: sum(len(meta["triplets"][c][s]) for c in CATEGORIES) for s in SPLITS}
        print(
            f"synthetic dataset ({_describe(args.seed, args.size, mix)}) at {root}: {len(meta['garments'])} garment images, "
            f"{len(meta['scenes'])} scene images, triplets train/val/test = {queries['train']}/{queries['val']}/{queries['test']}"
        )
        return 0

    return run_command(parser, argv, synth)
