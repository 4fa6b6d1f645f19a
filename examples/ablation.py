"""The paper's ablation on the embedded benchmark, powered: which stages and which fusion matter, with
95% confidence intervals, on edit-only and on mixed-scenario data.

    python examples/ablation.py --out runs/ablation            # everything; resumable; see docs/results.md

Data: the synthetic ``ablation`` size (1,000 test queries per category, 3,000 in all, extended attribute
vocabulary), data seed 0, written twice: ``edit`` only and ``mixed`` scenarios (a third each of ``edit``,
``text-led`` and ``image-led``).

Variants, for each dataset and each training seed (``--seeds``, default 0, 1, 2):

- III alone (adaptive), II + III (adaptive);
- I + II + III with the fixed sum, the gated Combiner and the adaptive weighting in its ``soft`` (the
  paper's), ``rank`` and ``implicit`` modes, and two diagnostics of ``soft``: softer targets
  (``tau_w`` 0.5 instead of 0.05) and a weaker weight loss (``lambda_w`` 0.1 instead of 1);
- the fixed-sum zero-shot rows after I, after II alone and after I + II (from those checkpoints).

Each seed trains Stage I once (its open-domain scene data are the same in both datasets; checked), and
Stage II twice per dataset (after I, and from scratch); the Stage III variants start from those. Every
stage uses the per-stage settings of ``--config`` (the demo's), with the training seed also seeding the
data order, and no validation during training: the final weights are evaluated.

Resumable: a run whose ``outcome.json`` exists is not trained again, an evaluation whose ``per_query*.json``
exists is not repeated (both written atomically). The report is rebuilt from the per-query files at the end
(``--report-only`` rebuilds just that): ``ablation.md``, ``ablation.json`` and ``w_img.png`` in ``--out``.

Intervals: percentile bootstrap (``--bootstrap`` resamples) over training seeds and over queries (within
each category); paired differences resample the same seeds and queries for both variants.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenario_sanity import REPO, SINGLE, evaluate_checkpoint, pipeline_config, sanity_table, train_stage, write_json

from ctiir.io import write_atomic

DATASETS = {"edit": "edit", "mixed": "mixed"}  # dataset name -> ``--scenarios`` of the generator
SCENARIO_NAMES = ("edit", "text-led", "image-led")
KS = (10, 50)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    before: tuple[str, ...]  # the stages trained before Stage III
    fusion: str
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("III-adaptive", "III alone (adaptive)", (), "adaptive"),
    Variant("II-III-adaptive", "II + III (adaptive)", ("II",), "adaptive"),
    Variant("I-II-III-fixed", "I + II + III, fixed sum", ("I", "II"), "fixed"),
    Variant("I-II-III-gated", "I + II + III, gated", ("I", "II"), "gated"),
    Variant("I-II-III-adaptive", "I + II + III, adaptive soft (the paper's)", ("I", "II"), "adaptive"),
    Variant("I-II-III-adaptive-rank", "I + II + III, adaptive rank", ("I", "II"), "adaptive", {"mode": "rank"}),
    Variant("I-II-III-adaptive-implicit", "I + II + III, adaptive implicit", ("I", "II"), "adaptive", {"mode": "implicit"}),
    # Diagnostics of the soft targets (the paper's mode): softer targets, and a weaker pull towards them.
    Variant("I-II-III-adaptive-tau0.5", "I + II + III, adaptive soft, tau_w 0.5", ("I", "II"), "adaptive", {"tau_w": 0.5}),
    Variant("I-II-III-adaptive-lambda0.1", "I + II + III, adaptive soft, lambda_w 0.1", ("I", "II"), "adaptive", {"lambda_w": 0.1}),
)
ZERO_SHOT = (("I",), ("II",), ("I", "II"))  # fixed-sum zero-shot rows: after these stages
PAIRED = (("I-II-III-adaptive", "I-II-III-fixed"), ("I-II-III-adaptive", "I-II-III-gated"),
          ("I-II-III-adaptive-rank", "I-II-III-fixed"), ("I-II-III-adaptive-implicit", "I-II-III-fixed"),
          ("I-II-III-adaptive-tau0.5", "I-II-III-fixed"), ("I-II-III-adaptive-lambda0.1", "I-II-III-fixed"))  # fmt: skip


# ---------------------------------------------------------------------------------------------- running
class Runner:
    """Trains and evaluates every run of the ablation once, in seed order, skipping finished ones."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.started = time.perf_counter()
        self.trained = 0

    def data_root(self, dataset: str) -> Path:
        return self.out / "data" / f"{self.args.size}-{dataset}"

    def config(self, dataset: str, seed: int, run_dir: Path) -> tuple[Any, dict[str, Any]]:
        cfg, stages = pipeline_config(self.args.config, run_dir, self.data_root(dataset))
        cfg.seed = seed
        cfg.data["init_args"]["seed"] = seed  # the training seed also draws the data order
        for stage in stages.values():
            stage.eval_kinds = ["composed"]  # the composed zero-shot rows; no Stage I/II retrieval of their own
            # No validation, and no test inside training: the final weights are evaluated once, per query.
            stage.trainer = {**stage.trainer, "limit_val_batches": 0, "limit_test_batches": 0}
            stage.trainer.pop("check_val_every_n_epoch", None)
            if self.args.max_steps:
                stage.max_steps = self.args.max_steps
        return cfg, stages

    def train(self, name: str, dataset: str, seed: int, run_dir: Path, init_from: str | None, **model: Any) -> str:
        cfg, stages = self.config(dataset, seed, run_dir)
        stage = copy.deepcopy(stages[name])
        stage.model = {**stage.model, **model}
        finished = (run_dir / f"stage-{name}" / "outcome.json").is_file()
        checkpoint = train_stage(name, cfg, stage, init_from, run_dir)
        if not finished:
            self.trained += 1
            outcome = json.loads((run_dir / f"stage-{name}" / "outcome.json").read_text(encoding="utf-8"))
            print(f"[ablation] {run_dir.relative_to(self.out)} stage {name}: {outcome['seconds']:.0f} s "
                  f"(elapsed {(time.perf_counter() - self.started) / 60:.1f} min)", flush=True)  # fmt: skip
        return checkpoint

    def evaluate(self, stage: str, checkpoint: str, dataset: str, out: Path, fusions: Sequence[str]) -> None:
        evaluate_checkpoint(stage, checkpoint, self.data_root(dataset), fusions, out)

    def run(self) -> None:
        from ctiir.datamodules.synthetic import generate

        for dataset in self.args.datasets:
            generate(self.data_root(dataset), seed=0, size=self.args.size, scenarios=DATASETS[dataset], progress=True)
        pairs = {(self.data_root(d) / "stage1" / "pairs.jsonl").read_bytes() for d in self.args.datasets}
        share_stage_one = len(pairs) == 1  # the same scenes (and so the same images): one Stage I serves all
        for seed in self.args.seeds:
            shared = self.out / f"seed-{seed}" / "I"
            for dataset in self.args.datasets:
                base = self.out / dataset / f"seed-{seed}"
                one_dir = shared if share_stage_one else base / "I"
                one = self.train("I", self.args.datasets[0] if share_stage_one else dataset, seed, one_dir, None)
                self.evaluate("I", one, dataset, one_dir / "stage-I" / f"per_query-{dataset}.json", ("sum",))
                prefixes = {("I",): one}
                for before, init in ((("II",), None), (("I", "II"), one)):
                    run_dir = base / "-".join(before)
                    prefixes[before] = self.train("II", dataset, seed, run_dir, init)
                    fusions = SINGLE if before == ("I", "II") else ("sum",)  # I + II: also the sanity table's rows
                    self.evaluate("II", prefixes[before], dataset, run_dir / "stage-II" / "per_query.json", fusions)
                for v in VARIANTS:
                    run_dir = base / v.key
                    fusion = {"fusion": v.fusion, **({"fusion_kwargs": v.fusion_kwargs} if v.fusion_kwargs else {})}
                    checkpoint = self.train("III", dataset, seed, run_dir, prefixes.get(v.before), **fusion)
                    self.evaluate("III", checkpoint, dataset, run_dir / "stage-III" / "per_query.json", ("model",))
        minutes = (time.perf_counter() - self.started) / 60
        print(f"[ablation] {self.trained} stage runs trained in this call, {minutes:.1f} min", flush=True)


# ---------------------------------------------------------------------------------------------- statistics
def load_rows(out: Path, dataset: str, seeds: Sequence[int]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Per variant key (and ``zero-shot <stages>``), per seed, the per-query rows that exist."""
    found: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for seed in seeds:
        base = out / dataset / f"seed-{seed}"
        shared, own = (d / "I" / "stage-I" / f"per_query-{dataset}.json" for d in (out / f"seed-{seed}", base))
        files = {
            "zero-shot:I": shared if shared.is_file() else own,
            "zero-shot:II": base / "II" / "stage-II" / "per_query.json",
            "zero-shot:I-II": base / "I-II" / "stage-II" / "per_query.json",
        }
        files.update({f"III:{v.key}": base / v.key / "stage-III" / "per_query.json" for v in VARIANTS})
        for key, path in files.items():
            if path.is_file():
                found.setdefault(key, {})[seed] = json.loads(path.read_text(encoding="utf-8"))
    return found


def matrix(per_seed: dict[int, list[dict[str, Any]]], key: str, fn: Any) -> tuple[Any, list[str], list[str]]:
    """(seeds x queries) array of ``fn(row[key])``, with each query's category and scenario (same order in
    every seed: the evaluation walks the same files)."""
    import numpy as np

    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    for s in seeds[1:]:
        if [(r["category"], r["query"]) for r in per_seed[s]] != [(r["category"], r["query"]) for r in first]:
            raise ValueError(f"seed {s}: per-query rows are not the same queries as seed {seeds[0]}")
    values = np.array([[fn(r[key]) for r in per_seed[s]] for s in seeds], dtype=float)
    return values, [r["category"] for r in first], [r["scenario"] for r in first]


def blocks_of(categories: Sequence[str], mask: Any = None) -> list[Any]:
    """The query columns of each category (restricted to ``mask``), non-empty ones only."""
    import numpy as np

    cats = np.asarray(categories)
    keep = np.ones(len(cats), bool) if mask is None else np.asarray(mask)
    columns = np.arange(len(cats))
    return [b for b in (columns[(cats == c) & keep] for c in sorted(set(categories))) if len(b)]


def estimate(values: Any, categories: Sequence[str], mask: Any = None) -> float:
    """The mean over seeds and queries, each category weighing the same (FashionIQ's average)."""
    import numpy as np

    return float(np.mean([values[:, b].mean() for b in blocks_of(categories, mask)]))


def bootstrap(values: Any, categories: Sequence[str], resamples: int, rng: Any, mask: Any = None) -> tuple[float, float, float]:
    """(estimate, low, high): :func:`estimate` of ``values`` (seeds x queries) and its 95% percentile interval,
    resampling seeds and, within each category, queries (``mask`` restricts the queries, e.g. a scenario)."""
    import numpy as np

    blocks = blocks_of(categories, mask)
    n_seeds = values.shape[0]
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    means = np.zeros(resamples)
    for b in blocks:
        picks = b[rng.integers(0, len(b), size=(resamples, len(b)))]
        means += values[seeds[:, :, None], picks[:, None, :]].mean(axis=(1, 2))
    means /= len(blocks)
    low, high = np.percentile(means, [2.5, 97.5])
    return estimate(values, categories, mask), float(low), float(high)


def summarise(rows: dict[str, dict[int, list[dict[str, Any]]]], resamples: int, seed: int = 0) -> dict[str, Any]:
    """Every variant's R@10, R@50 and their mean, with intervals, overall and per scenario; mean w_img; the
    paired differences."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"variants": {}, "paired": {}}
    scores: dict[str, Any] = {}
    for name, per_seed in rows.items():
        key = "rank_model" if name.startswith("III:") else "rank_sum"
        hit = {k: matrix(per_seed, key, lambda r, k=k: 100.0 * (r < k))[0] for k in KS}
        _, categories, scenarios = matrix(per_seed, key, float)
        score = (hit[10] + hit[50]) / 2
        scores[name] = (score, categories, scenarios)
        entry: dict[str, Any] = {"seeds": sorted(per_seed), "queries": len(categories)}
        for label, values in (("R@10", hit[10]), ("R@50", hit[50]), ("mean", score)):
            entry[label] = bootstrap(values, categories, resamples, rng)
        entry["scenarios"] = {}
        weights, _, _ = matrix(per_seed, "w_img", lambda w: np.nan if w is None else w)
        for scenario in SCENARIO_NAMES:
            mask = np.asarray(scenarios) == scenario
            if not mask.any():
                continue
            entry["scenarios"][scenario] = {
                "queries": int(mask.sum()),
                "R@10": estimate(hit[10], categories, mask),
                "R@50": estimate(hit[50], categories, mask),
                "mean": bootstrap(score, categories, resamples, rng, mask),
                "w_img": float(np.nanmean(weights[:, mask])) if name.startswith("III:") else None,
            }
        entry["w_img"] = float(np.nanmean(weights)) if name.startswith("III:") else None
        out["variants"][name] = entry
    for a, b in PAIRED:
        ka, kb = f"III:{a}", f"III:{b}"
        if ka in scores and kb in scores and out["variants"][ka]["seeds"] == out["variants"][kb]["seeds"]:
            (sa, categories, scenarios), (sb, _, _) = scores[ka], scores[kb]
            diff = sa - sb
            paired = {"all": bootstrap(diff, categories, resamples, rng)}
            for scenario in SCENARIO_NAMES:
                mask = np.asarray(scenarios) == scenario
                if mask.any() and not mask.all():
                    paired[scenario] = bootstrap(diff, categories, resamples, rng, mask)
            out["paired"][f"{a} - {b}"] = paired
    return out


# ---------------------------------------------------------------------------------------------- report
def fmt(ci: Sequence[float]) -> str:
    return f"{ci[0]:.1f} [{ci[1]:.1f}, {ci[2]:.1f}]"


def labels() -> dict[str, str]:
    names = {f"III:{v.key}": v.label for v in VARIANTS}
    names.update({"zero-shot:I": "fixed-sum zero-shot after I", "zero-shot:II": "fixed-sum zero-shot after II alone",
                  "zero-shot:I-II": "fixed-sum zero-shot after I + II"})  # fmt: skip
    return names


def findings(summary: dict[str, dict[str, Any]]) -> list[str]:
    """The questions of issue 11, answered from the numbers (nothing is assumed)."""
    lines = []
    mixed = summary.get("mixed")
    if mixed:
        for name, paired in mixed["paired"].items():
            if paired:
                d, lo, hi = paired["all"]
                verdict = "yes" if d >= 2 and lo > 0 else "no"
                lines.append(f"- Mixed data, {name.replace('I-II-III-', '')}: {d:+.1f} points [{lo:+.1f}, {hi:+.1f}] "
                             f"(2 points or more with the interval above 0: {verdict}).")  # fmt: skip
        paper = mixed["variants"].get("III:I-II-III-adaptive", {}).get("scenarios", {})
        if "text-led" in paper and "image-led" in paper:
            w_txt = 1 - paper["text-led"]["w_img"]
            w_img = paper["image-led"]["w_img"]
            lines.append(f"- Adaptive soft weights on mixed data: text-led queries w_txt = {w_txt:.3f} "
                         f"({'>' if w_txt > 0.6 else '<='} 0.6), image-led queries w_img = {w_img:.3f} "
                         f"({'>' if w_img > 0.6 else '<='} 0.6).")  # fmt: skip
    return lines


def sanity(rows: dict[str, dict[int, list[dict[str, Any]]]]) -> tuple[str, list[str]] | None:
    """The scenario sanity table (``examples/scenario_sanity.py``) over every seed: text-only, image-only and
    fixed-sum queries after I + II, and the paper's I + II + III model."""
    two, three = rows.get("zero-shot:I-II", {}), rows.get("III:I-II-III-adaptive", {})
    seeds = sorted(set(two) & set(three))
    if not seeds or "rank_text" not in two[seeds[0]][0]:
        return None
    return sanity_table([r for s in seeds for r in two[s]], [r for s in seeds for r in three[s]])


def markdown(summary: dict[str, dict[str, Any]], command: str, checks: dict[str, tuple[str, list[str]]]) -> str:
    names = labels()
    parts = ["# The ablation (written by examples/ablation.py)\n", f"Command: `{command}`\n"]
    for dataset, s in summary.items():
        parts.append(f"\n## {dataset} data\n")
        parts.append("| variant | seeds | R@10 [95% CI] | R@50 [95% CI] | mean of R@10, R@50 [95% CI] | w_img |")
        parts.append("|---|---|---|---|---|---|")
        for name, v in s["variants"].items():
            w = "-" if v["w_img"] is None else f"{v['w_img']:.3f}"
            parts.append(f"| {names[name]} | {len(v['seeds'])} | {fmt(v['R@10'])} | {fmt(v['R@50'])} | {fmt(v['mean'])} | {w} |")
        scen = [sc for sc in SCENARIO_NAMES if any(sc in v["scenarios"] for v in s["variants"].values())]
        if len(scen) > 1:
            parts.append("\nPer scenario: mean of R@10 and R@50 [95% CI], and the mean w_img.\n")
            head = " | ".join(f"{sc} ({next(v['scenarios'][sc]['queries'] for v in s['variants'].values())} q)" for sc in scen)
            parts.append(f"| variant | {head} | " + " | ".join(f"w_img {sc}" for sc in scen) + " |")
            parts.append("|---|" + "---|" * (2 * len(scen)))
            for name, v in s["variants"].items():
                cells = [fmt(v["scenarios"][sc]["mean"]) for sc in scen]
                cells += ["-" if v["scenarios"][sc]["w_img"] is None else f"{v['scenarios'][sc]['w_img']:.3f}" for sc in scen]
                parts.append(f"| {names[name]} | " + " | ".join(cells) + " |")
        if s["paired"]:
            parts.append("\nPaired differences of the mean of R@10 and R@50 (same seeds, same queries) [95% CI].\n")
            cols = ["all", *[sc for sc in scen if len(scen) > 1]]
            parts.append("| difference | " + " | ".join(cols) + " |")
            parts.append("|---|" + "---|" * len(cols))
            for name, p in s["paired"].items():
                label = name.replace("I-II-III-", "")
                parts.append(f"| {label} | " + " | ".join(fmt(p[c]) if c in p else "-" for c in cols) + " |")
    for dataset, (table, failed) in checks.items():
        parts.append(f"\n## Scenario sanity, {dataset} data (all seeds pooled; after I + II, and I + II + III adaptive)\n")
        parts.append(table)
        parts.append("".join(f"\nFAILED: {what}" for what in failed) or "All three expectations hold.")
    lines = findings(summary)
    if lines:
        parts.append("\n## Findings\n")
        parts.extend(lines)
    return "\n".join(parts) + "\n"


def plot(rows: dict[str, dict[int, list[dict[str, Any]]]], path: Path) -> None:
    """Histograms of the per-query image weight per scenario, one panel per weighting fusion (all seeds)."""
    import matplotlib  # an optional dependency (``pip install 'ctiir[plot]'``), only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [v for v in VARIANTS if v.fusion in ("adaptive", "gated") and f"III:{v.key}" in rows]
    cols = min(len(panels), 3) or 1
    grid = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(grid, cols, figsize=(4.2 * cols, 3.0 * grid), sharex=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, v in zip(axes.flat, panels, strict=False):
        per_seed = rows[f"III:{v.key}"]
        for scenario in SCENARIO_NAMES:
            weights = [r["w_img"] for seed_rows in per_seed.values() for r in seed_rows if r["scenario"] == scenario and r["w_img"] is not None]
            if weights:
                ax.hist(weights, bins=40, range=(0, 1), histtype="step", density=True, label=f"{scenario} ({len(weights)})")
        ax.set_title(v.label, fontsize=9)
        ax.set_xlabel("w_img (per query, all seeds)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def report(args: argparse.Namespace, command: str) -> str:
    rows = {d: load_rows(args.out, d, args.seeds) for d in args.datasets}
    summary = {d: summarise(r, args.bootstrap) for d, r in rows.items() if r}
    checks = {d: c for d, c in ((d, sanity(r)) for d, r in rows.items()) if c is not None and len(c[0].splitlines()) > 3}
    text = markdown(summary, command, checks)
    write_atomic(args.out / "ablation.md", text)
    write_json(args.out / "ablation.json", {"command": command, "summary": summary})
    weighted = "mixed" if "mixed" in rows else next(iter(rows), None)
    if weighted and rows[weighted]:
        plot(rows[weighted], args.out / "w_img.png")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="run folder (resumable)")
    parser.add_argument("--config", type=Path, default=REPO / "ctiir/configs/synthetic.yaml", help="per-stage settings")
    parser.add_argument("--size", default="ablation", help="synthetic size (default: ablation)")
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS), help="edit,mixed")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2], help="0,1,2")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: robust on a shared machine)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every stage at this many steps (smoke tests)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    args = parser.parse_args(argv)
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        parser.error(f"--datasets: unknown {unknown}; known: {', '.join(DATASETS)}")

    import torch

    torch.set_num_threads(args.threads)
    command = "python examples/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        Runner(args).run()
    print(report(args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
