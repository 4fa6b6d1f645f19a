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

Recall is computed here, per query, with ``ctiir.metrics``' ``retrieval_ranks`` / ``recall_at_k`` on
embeddings from the stage's ``encode_images`` / ``encode_texts`` / ``fusion``; the per-query ranks and
weights are also what ``examples/ablation.py`` aggregates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
KS = (10, 50)
SINGLE = ("text", "image", "sum")  # single-modality and fixed-sum queries of a Stage I or II model


# ---------------------------------------------------------------------------------------------- files
def write_json(path: Path, data: Any) -> None:
    """Atomically: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.chmod(handle.name, 0o644)  # a temporary file is private (0600); the result is an ordinary file
    os.replace(handle.name, path)


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class QuerySet:
    """One category's test queries: reference and target gallery positions, query texts, scenarios."""

    category: str
    gallery_ids: list[str]
    references: list[int]
    targets: list[int]
    texts: list[str]
    scenarios: list[str]


def query_sets(root: Path) -> list[QuerySet]:
    """The test split of a synthetic benchmark (its val files), from its ``synthetic.json``."""
    from ctiir.datamodules.synthetic import CATEGORIES, query_scenarios, read_metadata
    from ctiir.datamodules.text import compose_query_text

    meta = read_metadata(root)
    out = []
    for category in CATEGORIES:
        gallery = list(meta["splits"][category]["val"])
        index = {image_id: i for i, image_id in enumerate(gallery)}
        entries = meta["triplets"][category]["val"]
        out.append(
            QuerySet(
                category=category,
                gallery_ids=gallery,
                references=[index[e["candidate"]] for e in entries],
                targets=[index[e["target"]] for e in entries],
                texts=[compose_query_text(e["captions"], "clip4cir") for e in entries],
                scenarios=query_scenarios(meta, category, "val"),
            )
        )
    return out


def encode(items: Sequence[Any], fn: Callable[[Any], Any], batch_size: int) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])


def per_query(model: Any, root: Path, sets: list[QuerySet], batch_size: int = 256) -> list[dict[str, Any]]:
    """Per test query: its category and scenario, the 0-based rank of its target for text-only, image-only,
    fixed-sum and the model's own fusion (``model``), and the model's image weight."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from ctiir.metrics.functional import retrieval_ranks

    model.eval()
    transform = model.backbone.eval_transform

    def images(ids: Sequence[str]) -> Any:
        def load(batch: Sequence[str]) -> Any:
            tensors = []
            for image_id in batch:
                with Image.open(root / "images" / f"{image_id}.png") as img:
                    tensors.append(transform(img.convert("RGB")))
            return model.encode_images(torch.stack(tensors))

        return encode(ids, load, batch_size)

    rows: list[dict[str, Any]] = []
    for qs in sets:
        g = images(qs.gallery_ids)
        v = g[torch.tensor(qs.references)]  # the reference is a gallery image: its embedding is already there
        t = encode(qs.texts, lambda batch: model.encode_texts(list(batch)), batch_size)
        with torch.no_grad():
            fused = model.fusion(v, t)
            weights = model.fusion.last_weights
        queries = {"text": t, "image": v, "sum": F.normalize(v + t, dim=-1), "model": fused}
        target = torch.tensor(qs.targets)
        ranks = {name: retrieval_ranks(q, g, target) for name, q in queries.items()}
        for i, scenario in enumerate(qs.scenarios):
            row = {"category": qs.category, "scenario": scenario, "query": i}
            row.update({f"rank_{name}": int(r[i]) for name, r in ranks.items()})
            row["w_img"] = None if weights is None else float(weights[i, 0])
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
    """A stage model from its checkpoint.

    Not ``load_from_checkpoint``: a stage started with ``init_from`` records ``initialized_from`` in its
    hyper-parameters, which its ``__init__`` does not take (reported to the lead; this works around it).
    """
    import torch

    from ctiir.stages import STAGES

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "initialized_from"}
    model = STAGES[stage](**hparams)
    model.load_state_dict(ckpt["state_dict"])
    return model


def evaluate_checkpoint(stage: str, checkpoint: str, data: Path, sets: list[QuerySet], out: Path) -> list[dict[str, Any]]:
    """Per-query results of a stage checkpoint, cached (atomically) in ``out``."""
    if out.is_file():
        return json.loads(out.read_text(encoding="utf-8"))
    rows = per_query(load_stage(stage, checkpoint), data, sets)
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
    sets = query_sets(data)
    after = {name: evaluate_checkpoint(name, checkpoints[name], data, sets, args.out / f"stage-{name}" / "per_query.json") for name in ("II", "III")}
    table, failed = sanity_table(after["II"], after["III"])
    command = "python examples/scenario_sanity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = f"{table}\nCommand: `{command}`\n"
    report += "".join(f"\nFAILED: {what}" for what in failed) or "\nAll three expectations hold."
    (args.out / "scenario_sanity.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
