"""The paper's ablation on the embedded benchmark: which stages, and which fusion, matter.

    python examples/ablation.py --config ctiir/configs/synthetic.yaml --run_dir runs/ablation

Every variant uses the same seed and the same per-stage budget as the config. Stage checkpoints are
shared where variants share a prefix (I, then II after I), so the whole table costs 3 Stage I/II runs and
5 Stage III runs. It prints the table and writes ``ablation.md`` and ``ablation.json`` in the run folder.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from ctiir.pipeline import PipelineConfig, StageConfig, build_parser, composed_summary, run_stage

VARIANTS = [
    # (label, stages before III, fusion)
    ("III alone", (), "adaptive"),
    ("II + III", ("II",), "adaptive"),
    ("I + II + III, fixed sum", ("I", "II"), "fixed"),
    ("I + II + III, gated", ("I", "II"), "gated"),
    ("I + II + III, adaptive (the paper's)", ("I", "II"), "adaptive"),
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    ns.pop("skip", None)
    ns.pop("config", None)
    cfg = PipelineConfig(**{k: v for k, v in ns.as_dict().items() if k in PipelineConfig.__dataclass_fields__})
    stages = {k: StageConfig(**v) if isinstance(v, dict) else v for k, v in cfg.stages.items()}
    run_dir = Path(cfg.run_dir)
    if (run_dir / "ablation.json").exists():
        raise FileExistsError(f"{run_dir} already holds an ablation (ablation.json); choose another --run_dir")
    prefixes: dict[tuple[str, ...], dict] = {(): {"checkpoint": None}}
    rows = []
    for label, before, fusion in VARIANTS:
        for depth in range(1, len(before) + 1):  # train each shared prefix once
            prefix = before[:depth]
            if prefix not in prefixes:
                init = prefixes[prefix[:-1]]["checkpoint"]
                prefixes[prefix] = run_stage(prefix[-1], cfg, stages.get(prefix[-1], StageConfig()), init, run_dir / "-".join(prefix))
        third = copy.deepcopy(stages.get("III", StageConfig()))
        third.model = {**third.model, "fusion": fusion}
        name = "-".join((*before, "III")) + f"-{fusion}"
        outcome = run_stage("III", cfg, third, prefixes[before]["checkpoint"], run_dir / name)
        rows.append({"variant": label, "stages": [*before, "III"], "fusion": fusion, **composed_summary(outcome), "seconds": outcome["seconds"]})
    baselines = [
        {"variant": f"fixed-sum zero-shot after {'+'.join(p)}", **composed_summary(o)}
        for p, o in prefixes.items() if p
    ]
    table = ablation_markdown(baselines + rows)
    (run_dir / "ablation.md").write_text(table)
    (run_dir / "ablation.json").write_text(json.dumps({"rows": baselines + rows, "config": str(cfg)}, indent=2, default=str))
    print(table)
    return 0


def ablation_markdown(rows: list[dict]) -> str:
    header = "| variant | avg R@1 | avg R@10 | avg R@50 | mean (R@10, R@50) | w_img |\n|---|---|---|---|---|---|\n"

    def cell(row: dict, key: str, digits: int = 2) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    body = "".join(
        f"| {r['variant']} | {cell(r, 'avg/R@1')} | {cell(r, 'avg/R@10')} | {cell(r, 'avg/R@50')} | {cell(r, 'score')} | {cell(r, 'avg/w_img', 3)} |\n"
        for r in rows
    )
    return header + body


if __name__ == "__main__":
    sys.exit(main())
