"""``ctiir progressive``: Stage I -> II -> III in one command, each stage starting from the previous best.

A run directory gets, per stage, its checkpoint (``stage-I/best.ckpt`` ...), the stage's resolved config
(``stage-I/config.yaml``) and its logs (CSV in the stage folder, or the loggers of ``trainer: {logger: ...}``,
per stage too); at the end ``results.json`` and ``results.md`` (R@1/R@10/R@50
per category, averages, and the mean adaptive weights). Stages can be skipped for the paper's ablation.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import instantiate_class
from lightning.pytorch.loggers import CSVLogger

from ctiir.callbacks import EvaluationResult, RetrievalEvaluation
from ctiir.stages import STAGES

log = logging.getLogger(__name__)
STAGE_ORDER = ("I", "II", "III")
EXAMPLES = 8  # best- and worst-ranked queries drawn per task after the last stage


@dataclass
class StageConfig:
    """One stage of the pipeline. ``model`` holds the stage class's arguments (fusion, learning rates, ...)."""

    enabled: bool = True
    max_epochs: int = 1
    max_steps: int = -1
    model: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    eval_kinds: list[str] | None = None  # default: the stage's own (``default_eval_kinds``)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/progressive"
    seed: int = 0
    backbone: str = "tiny"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    progress_bar: bool = True
    overwrite: bool = False


def run_stage(
    name: str,
    cfg: PipelineConfig,
    stage: StageConfig,
    init_from: str | None,
    run_dir: Path,
    last: bool = False,
) -> dict[str, Any]:
    """Train one stage (or only evaluate it with ``max_epochs: 0``); return its results and best checkpoint.

    Everything goes to ``run_dir/stage-<name>``: ``best.ckpt``, ``config.yaml`` and the logs (:func:`stage_loggers`).
    """
    L.seed_everything(cfg.seed, workers=True)
    stage_dir = run_dir / f"stage-{name}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    data = instantiate_class((), cfg.data)
    model_args = {"backbone": cfg.backbone, "backbone_kwargs": dict(cfg.backbone_kwargs) or None, **stage.model}
    if init_from:
        model_args["init_from"] = init_from
        model_args["backbone_kwargs"] = None  # the weights come from the checkpoint, not from a source
    if stage.eval_kinds is not None:
        model_args["eval_kinds"] = stage.eval_kinds
    model = STAGES[name](**model_args)
    # The last stage draws its best- and worst-ranked test queries into stage-<name>/examples/.
    evaluation = RetrievalEvaluation(save_examples=EXAMPLES if last else 0)
    checkpoint = ModelCheckpoint(dirpath=stage_dir, filename="best", monitor="val/score", mode="max", save_top_k=1, save_last=False, enable_version_counter=False)
    callbacks: list[Any] = [evaluation, checkpoint]
    if cfg.progress_bar:
        callbacks.append(RichProgressBar())
    trainer_config = {**cfg.trainer, **stage.trainer}
    logger_spec = trainer_config.pop("logger", True)
    trainer_args = {
        "logger": stage_loggers(logger_spec, stage_dir),
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "deterministic": False,
        **trainer_config,
        "max_epochs": stage.max_epochs,
        "max_steps": stage.max_steps,
        "callbacks": callbacks,
        "default_root_dir": str(stage_dir),
        "enable_progress_bar": cfg.progress_bar,
    }
    (stage_dir / "config.yaml").write_text(
        yaml.safe_dump({"stage": name, "model": {"class_path": f"{type(model).__module__}.{type(model).__name__}", "init_args": _plain(model.hparams)}, "data": cfg.data, "trainer": {**{k: v for k, v in trainer_args.items() if k not in ("callbacks", "logger")}, "logger": logger_spec}}, sort_keys=False)
    )
    trainer = L.Trainer(**trainer_args)
    started = time.perf_counter()
    if stage.max_epochs != 0 or stage.max_steps > 0:
        trainer.fit(model, datamodule=data)
    best = checkpoint.best_model_path
    if not best:  # zero epochs (pretrained weights, evaluate only): save the model as it is
        best = str(stage_dir / "best.ckpt")
        trainer.strategy.connect(model)
        trainer.save_checkpoint(best)
    trainer.test(model, datamodule=data, ckpt_path=best if checkpoint.best_model_path else None, verbose=False)
    tested = evaluation.results.get("test", EvaluationResult("test"))
    return {
        "fusion": model.hparams["fusion"]["name"],
        "checkpoint": best,
        "seconds": round(time.perf_counter() - started, 1),
        "metrics": tested.flat(),  # the logged keys, for reading results.json by eye
        "evaluation": tested.to_dict(),  # the same numbers, structured: what the tables read
        "epochs": trainer.current_epoch,
    }


LOGGERS_MODULE = "lightning.pytorch.loggers"


def stage_loggers(spec: Any, stage_dir: Path) -> Any:
    """The ``logger`` of a stage's Trainer, from ``trainer: {logger: ...}`` (a stage's own ``trainer`` wins).

    ``true`` (the default): a ``CSVLogger`` writing ``stage_dir/logs``. ``false`` / ``null``: no logger. A
    Lightning logger's name (``TensorBoardLogger``) or any class path, ``{class_path, init_args}``, or a list of
    these: those loggers, with ``save_dir`` set to the stage folder when the class takes one and the config
    does not give it, so that each stage logs under its own folder. Anything else is an error naming the key.
    """
    if spec is True:
        return CSVLogger(stage_dir, name="", version="logs")
    if spec is False or spec is None:
        return False
    if isinstance(spec, list):
        return [stage_loggers(item, stage_dir) for item in spec]
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str) or set(spec) - {"class_path", "init_args"}:
        raise ValueError(
            f"trainer.logger: expected true, false, a logger class (name or class path), {{class_path, init_args}} "
            f"or a list of these; got {spec!r:.200}"
        )
    class_path = spec["class_path"] if "." in spec["class_path"] else f"{LOGGERS_MODULE}.{spec['class_path']}"
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"trainer.logger: cannot import {class_path!r} ({err})") from err
    init_args = dict(spec.get("init_args") or {})
    if "save_dir" in inspect.signature(cls).parameters and "save_dir" not in init_args:
        init_args["save_dir"] = str(stage_dir)
    try:
        return cls(**init_args)
    except (TypeError, ModuleNotFoundError) as err:  # a wrong argument, or the logger's package not installed
        raise ValueError(f"trainer.logger: cannot create {class_path}: {err}") from err


def _plain(value: Any) -> Any:
    """Hyper-parameters as plain YAML-able data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def run_progressive(cfg: PipelineConfig, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    if (run_dir / "results.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{run_dir} already holds a finished run (results.json); choose another run_dir or set overwrite: true")
    unknown = sorted(set(cfg.stages) - set(STAGE_ORDER))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} in config; stages are {list(STAGE_ORDER)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": asdict(cfg), "stages": {}}
    previous: str | None = None
    running = [n for n in STAGE_ORDER if cfg.stages.get(n, StageConfig()).enabled and n not in skip]
    for name in STAGE_ORDER:
        stage = cfg.stages.get(name, StageConfig())
        if name not in running:
            results["stages"][name] = {"skipped": True}
            continue
        log.info("stage %s (init_from=%s)", name, previous)
        outcome = run_stage(name, cfg, stage, previous, run_dir, last=name == running[-1])
        results["stages"][name] = outcome
        previous = outcome["checkpoint"]
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(results_markdown(results))
    return results


def composed_summary(outcome: EvaluationResult | dict[str, Any]) -> dict[str, Any]:
    """The composed protocol of a stage's test results: per-subset metrics, averages, score, weights.

    Takes the callback's ``EvaluationResult`` or a stage outcome of ``results.json`` (its ``evaluation``).
    Keys: ``protocol``, ``subsets``, ``<subset>/<metric>``, ``avg/<metric>`` (several subsets) or
    ``<metric>`` (one), ``score``. Stage I and II's own image<->text protocols are left out.
    """
    result = outcome if isinstance(outcome, EvaluationResult) else EvaluationResult.from_dict(outcome["evaluation"])
    composed = result.composed()
    if composed is None:
        return {}
    out: dict[str, Any] = {"protocol": composed.protocol, "subsets": [s for s in composed.subsets if s]}
    for subset, metrics in composed.subsets.items():
        out.update({f"{subset}/{m}" if subset else m: v for m, v in metrics.items()})
    out.update({f"avg/{m}": v for m, v in composed.average.items()})
    out["score"] = composed.score
    return out


def results_markdown(results: dict[str, Any]) -> str:
    """R@1/R@10/R@50 per category, averages and the mean adaptive weights after each stage."""
    rows = []
    for name, outcome in results["stages"].items():
        if outcome.get("skipped"):
            continue
        rows.append((f"{name} ({outcome.get('fusion', '?')})", composed_summary(outcome), outcome.get("seconds")))
    subsets = next((summary["subsets"] for _, summary, _ in rows if summary), [])
    header = ["after stage (fusion)"] + [f"{c} R@{k}" for c in subsets for k in (1, 10, 50)]
    header += ["avg R@10", "avg R@50", "mean", "w_img", "w_txt", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, m, seconds in rows:
        cells = [label] + [_fmt(m.get(f"{c}/R@{k}")) for c in subsets for k in (1, 10, 50)]
        cells += [_fmt(m.get(f"avg/R@{k}", m.get(f"R@{k}"))) for k in (10, 50)]
        cells += [_fmt(m.get("score")), _fmt(m.get("avg/w_img", m.get("w_img")), 3), _fmt(m.get("avg/w_txt", m.get("w_txt")), 3)]
        cells += [_fmt(seconds, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    protocol = next((summary["protocol"] for _, summary, _ in rows if summary), "?")
    note = (
        f"\nProtocol `{protocol}`, test split (FashionIQ-style: val files). Stages I and II use the fixed-sum "
        "fusion, so their rows are the fixed-sum zero-shot baseline after that stage.\n"
    )
    return "\n".join(lines) + "\n" + note


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_summary(results: dict[str, Any]) -> None:
    """A terminal-width table of the composed recall after each stage (per category: results.md)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="composed retrieval, test split (per category: results.md)")
    for column in ("after stage", "fusion", "avg R@1", "avg R@10", "avg R@50", "mean", "w_img", "seconds"):
        table.add_column(column, justify="left" if column in ("after stage", "fusion") else "right")
    for name, outcome in results["stages"].items():
        if outcome.get("skipped"):
            table.add_row(name, "skipped", *["-"] * 6)
            continue
        m = composed_summary(outcome)
        table.add_row(
            name, outcome["fusion"], _fmt(m.get("avg/R@1")), _fmt(m.get("avg/R@10")), _fmt(m.get("avg/R@50")),
            _fmt(m.get("score")), _fmt(m.get("avg/w_img"), 3), _fmt(outcome["seconds"], 0),
        )
    Console().print(table)


def build_parser() -> ArgumentParser:
    """``ctiir progressive``'s options: the fields of :class:`PipelineConfig` (the convention: ``ctiir.cliargs``)."""
    from ctiir.cliargs import command_parser

    parser = command_parser(
        "progressive", __doc__,
        config_help="YAML config: a file, or a packaged config by name (`ctiir config` lists them)",
    )
    parser.add_class_arguments(PipelineConfig, nested_key=None, as_group=False)
    parser.add_argument("--skip", type=list[str], default=[], help="stages to skip, e.g. --skip=[I,II]")
    return parser


def progressive_main(argv: list[str] | None = None) -> int:
    from ctiir.cliargs import run_command
    from ctiir.configs import resolve_config_args

    parser = build_parser()

    def progressive(ns: Any) -> int:
        skip = tuple(ns.pop("skip"))
        ns.pop("config", None)
        cfg = PipelineConfig(**{k: v for k, v in ns.as_dict().items() if k in PipelineConfig.__dataclass_fields__})
        cfg.stages = {k: StageConfig(**v) if isinstance(v, dict) else v for k, v in cfg.stages.items()}
        bad = [s for s in skip if s not in STAGE_ORDER]
        if bad:
            parser.error(f"--skip: unknown stage(s) {bad}; stages are {list(STAGE_ORDER)}")
        results = run_progressive(cfg, skip)
        print_summary(results)
        print(f"results: {Path(cfg.run_dir) / 'results.md'}")
        return 0

    return run_command(parser, resolve_config_args(sys.argv[1:] if argv is None else argv), progressive)
