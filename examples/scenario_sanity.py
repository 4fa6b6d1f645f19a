"""Do the embedded benchmark's retrieval scenarios need the modality they are named for? A sanity table.

    python examples/scenario_sanity.py --out runs/scenario-sanity

It writes the synthetic benchmark with ``--scenarios mixed`` (a third each of ``edit``, ``text-led`` and
``image-led`` triplets), trains Stages I -> II -> III on it with the demo's settings
(``ctiir/configs/synthetic.yaml``: tiny backbone, adaptive fusion in Stage III), and then scores the
test split (the val files, FashionIQ's ``original`` protocol, reference kept in the gallery) per scenario:

- after Stage II: text-only queries (the captions), image-only queries (the reference) and the fixed sum;
- after Stage III: the trained model's composed queries, and its mean image weight ``w_img``.

Expected: text-only beats image-only on ``text-led``, image-only beats text-only on ``image-led``, and on
``edit`` neither single modality comes near the trained composed model. The script checks these three and
exits with status 1 if one fails. Stages whose ``outcome.json`` exists are not trained again.

Every score comes from the library's own evaluation (``RetrievalEvaluation`` on ``SyntheticDataModule``'s
test tasks, ``breakdown=["scenario"]``), keeping each query's rank and weights (``keep_queries=True``);
text-only and image-only queries are the fixed sum with ``alpha`` 0 and 1. The per-query files are also
what ``examples/ablation.py`` aggregates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
KS = (10, 50)
SINGLE = ("text", "image", "sum")  # single-modality and fixed-sum queries of a Stage I or II model


# ---------------------------------------------------------------------------------------------- files
def write_json(path: Path, data: Any) -> None:
    """Atomically (``ctiir.io.write_atomic``: a temporary file in the same folder, then a rename)."""
    from ctiir.io import write_atomic

    write_atomic(path, json.dumps(data, indent=1))  # creates the folder too


# ---------------------------------------------------------------------------------------------- evaluation
# Query-side fusions that score a Stage I or II model's embeddings: the text alone, the reference alone, and
# the fixed sum (the zero-shot composed query). ``None``: the model's own fusion.
QUERY_FUSIONS: dict[str, dict[str, Any] | None] = {
    "text": {"name": "fixed", "alpha": 0.0},
    "image": {"name": "fixed", "alpha": 1.0},
    "sum": {"name": "fixed", "alpha": 0.5},
    "model": None,
}


def outcomes(model: Any, root: Path) -> dict[str, list[Any]]:
    """Every composed test query of the benchmark at ``root``, per task: the library's own evaluation
    (``RetrievalEvaluation`` over ``SyntheticDataModule``'s test tasks, with the ``scenario`` breakdown),
    keeping each query's outcome (rank, scenario, weights)."""
    import lightning as L

    from ctiir.callbacks import RetrievalEvaluation
    from ctiir.datamodules import SyntheticDataModule

    data = SyntheticDataModule(root=str(root), generate_if_missing=False, breakdown=["scenario"], eval_batch_size=256)
    evaluation = RetrievalEvaluation(kinds=["composed"], keep_queries=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=[evaluation], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.test(model, datamodule=data, verbose=False)
    return evaluation.queries["test"]


def per_query(model: Any, root: Path, fusions: Sequence[str]) -> list[dict[str, Any]]:
    """Per test query: its category, scenario and name, the 0-based rank of its target under each of
    ``fusions`` (keys of ``QUERY_FUSIONS``: ``rank_text``, ...), and the image weight of the model's own
    fusion (``w_img``, ``None`` unless ``"model"`` is among them and the fusion has weights)."""
    from ctiir.stages.base import resolve_fusion

    own = model.fusion
    found = {}
    for name in fusions:
        config = QUERY_FUSIONS[name]
        model.fusion = own if config is None else resolve_fusion(dict(config), None, model.backbone.embed_dim)
        found[name] = outcomes(model, root)
    model.fusion = own
    rows: list[dict[str, Any]] = []
    first = found[fusions[0]]
    for key, queries in first.items():
        for i, outcome in enumerate(queries):
            row = {"category": key.rsplit("/", 1)[-1], "scenario": outcome.groups["scenario"], "query": outcome.name}
            row.update({f"rank_{name}": found[name][key][i].rank for name in fusions})
            row["w_img"] = found["model"][key][i].w_img if "model" in found else None
            rows.append(row)
    return rows


def recall(rows: Sequence[dict[str, Any]], key: str, k: int) -> float:
    import torch

    from ctiir.metrics.functional import recall_at_k

    return recall_at_k(torch.tensor([r[key] for r in rows]), [k])[k]


def by_scenario(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    from ctiir.datamodules.synthetic import SCENARIOS

    groups: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
    for row in rows:
        groups[row["scenario"]].append(row)
    return {s: g for s, g in groups.items() if g}


# ---------------------------------------------------------------------------------------------- training
def pipeline_config(config: Path, run_dir: Path, data_root: Path) -> tuple[Any, dict[str, Any]]:
    """The ``ctiir progressive`` config of ``config``, reading the benchmark at ``data_root`` as it is."""
    from ctiir.pipeline import PipelineConfig, StageConfig, build_parser

    ns = build_parser().parse_args(["--config", str(config), "--run_dir", str(run_dir)])
    ns.pop("skip", None)
    ns.pop("config", None)
    cfg = PipelineConfig(**{k: v for k, v in ns.as_dict().items() if k in PipelineConfig.__dataclass_fields__})
    init = dict(cfg.data.get("init_args", {}))
    init.update(root=str(data_root), generate_if_missing=False)  # generated here, with its scenario mix
    cfg.data = {**cfg.data, "init_args": init}
    cfg.progress_bar = False
    stages = {k: StageConfig(**v) if isinstance(v, dict) else v for k, v in cfg.stages.items()}
    return cfg, stages


def train_stage(name: str, cfg: Any, stage: Any, init_from: str | None, run_dir: Path) -> str:
    """Train one stage into ``run_dir/stage-<name>`` unless its ``outcome.json`` exists; return its checkpoint.

    ``outcome.json`` is written (atomically) only after the stage finished, so an interrupted stage is
    trained again from its start.
    """
    from ctiir.pipeline import run_stage

    done = run_dir / f"stage-{name}" / "outcome.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))["checkpoint"]
    outcome = run_stage(name, cfg, stage, init_from, run_dir)
    write_json(done, {k: outcome[k] for k in ("checkpoint", "seconds", "epochs", "fusion")})
    return outcome["checkpoint"]


def load_stage(stage: str, checkpoint: str) -> Any:
    """A stage model from its checkpoint (``weights_only`` loading, the recorded preprocessing)."""
    from ctiir.stages import STAGES

    return STAGES[stage].load_from_checkpoint(checkpoint, map_location="cpu")


def evaluate_checkpoint(stage: str, checkpoint: str, data: Path, fusions: Sequence[str], out: Path) -> list[dict[str, Any]]:
    """Per-query results of a stage checkpoint under ``fusions``, cached (atomically) in ``out``."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    rows = per_query(load_stage(stage, checkpoint), data, fusions)
    write_json(out, rows)
    return rows


# ---------------------------------------------------------------------------------------------- report
def sanity_table(after_two: Sequence[dict[str, Any]], after_three: Sequence[dict[str, Any]]) -> tuple[str, list[str]]:
    """The markdown table and the list of failed expectations."""
    two, three = by_scenario(after_two), by_scenario(after_three)
    header = ["scenario", "queries"]
    header += [f"{label} R@{k}" for label in ("II text-only", "II image-only", "II fixed sum", "III trained") for k in KS]
    header += ["III w_img"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    r: dict[tuple[str, str, int], float] = {}
    for scenario, rows in two.items():
        for key in SINGLE:
            for k in KS:
                r[(scenario, key, k)] = recall(rows, f"rank_{key}", k)
        for k in KS:
            r[(scenario, "trained", k)] = recall(three[scenario], "rank_model", k)
        weights = [row["w_img"] for row in three[scenario] if row["w_img"] is not None]
        cells = [scenario, str(len(rows))] + [f"{r[(scenario, key, k)]:.1f}" for key in (*SINGLE, "trained") for k in KS]
        cells.append(f"{sum(weights) / len(weights):.3f}" if weights else "-")
        lines.append("| " + " | ".join(cells) + " |")
    failed = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failed.append(what)

    if "text-led" in two:
        check(all(r[("text-led", "text", k)] > r[("text-led", "image", k)] for k in KS), "text-only beats image-only on text-led")
    if "image-led" in two:
        check(all(r[("image-led", "image", k)] > r[("image-led", "text", k)] for k in KS), "image-only beats text-only on image-led")
    if "edit" in two:
        best_single = max(r[("edit", key, 10)] for key in ("text", "image"))
        check(best_single < r[("edit", "trained", 10)] / 2, "on edit, neither modality reaches half the trained model's R@10")
    return "\n".join(lines) + "\n", failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scenario-sanity"), help="run folder (resumable)")
    parser.add_argument("--data", type=Path, default=None, help="benchmark folder (default: OUT/data)")
    parser.add_argument("--config", type=Path, default=REPO / "ctiir/configs/synthetic.yaml", help="stage settings")
    parser.add_argument("--size", default="default", help="synthetic size (default: default)")
    parser.add_argument("--scenarios", default="mixed", help="scenario mix (default: mixed)")
    parser.add_argument("--seed", type=int, default=0, help="benchmark and training seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is far faster on a busy machine)")
    args = parser.parse_args(argv)

    import torch

    from ctiir.datamodules.synthetic import generate

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or args.out / "data"
    generate(data, seed=args.seed, size=args.size, scenarios=args.scenarios, progress=True)
    cfg, stages = pipeline_config(args.config, args.out, data)
    cfg.seed = args.seed
    checkpoints: dict[str, str] = {}
    previous = None
    for name in ("I", "II", "III"):
        previous = checkpoints[name] = train_stage(name, cfg, stages[name], previous, args.out)
    after = {
        "II": evaluate_checkpoint("II", checkpoints["II"], data, SINGLE, args.out / "stage-II" / "per_query.json"),
        "III": evaluate_checkpoint("III", checkpoints["III"], data, ("model",), args.out / "stage-III" / "per_query.json"),
    }
    table, failed = sanity_table(after["II"], after["III"])
    command = "python examples/scenario_sanity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = f"{table}\nCommand: `{command}`\n"
    report += "".join(f"\nFAILED: {what}" for what in failed) or "\nAll three expectations hold."
    (args.out / "scenario_sanity.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
