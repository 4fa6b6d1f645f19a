"""``ctiir progressive``: Stage I -> II -> III in one command, each stage starting from the previous best.

A run directory gets, per stage, its checkpoint (``stage-I/best.ckpt`` ...), the stage's resolved config
(``stage-I/config.yaml``) and its logs (CSV in the stage folder, or the loggers of ``trainer: {logger: ...}``,
per stage too); at the end ``results.json`` and ``results.md`` (R@1/R@10/R@50
per category, averages, and the mean adaptive weights). Stages can be skipped for the paper's ablation.

Resuming: every stage also keeps ``last.ckpt`` (written at each epoch end) and, once tested, ``outcome.json``.
Run the same command again after an interruption and finished stages are not run again, the interrupted
one resumes from its ``last.ckpt`` (exactly: see ``ctiir.datamodules.sampling``), and the rest follow.
``run-config.json`` records the configuration; a run directory is only resumed with the same one.
Every file is written atomically (``ctiir.io``), checkpoints included (``ctiir.checkpoints.SafeCheckpointIO``).
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from collections.abc import Mapping
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

from ctiir.callbacks import EvaluationResult, ProtocolResult, RetrievalEvaluation
from ctiir.checkpoints import SafeCheckpointIO
from ctiir.io import write_atomic
from ctiir.stages import STAGES
from ctiir.stages.base import check_fusion

log = logging.getLogger(__name__)
STAGE_ORDER = ("I", "II", "III")
EXAMPLES = 8  # best- and worst-ranked queries drawn per task after the last stage
LAST = "last.ckpt"  # each stage's resume point, written at every epoch end
OUTCOME = "outcome.json"  # a finished (trained and tested) stage
RUN_CONFIG = "run-config.json"


class PipelineError(ValueError):
    """A pipeline config that cannot run, or a run directory that holds another run: a few lines, no traceback."""


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
    resume: bool = True,
) -> dict[str, Any]:
    """Train one stage (or only evaluate it with ``max_epochs: 0``); return its results and best checkpoint.

    Everything goes to ``run_dir/stage-<name>``: ``best.ckpt``, ``last.ckpt``, ``config.yaml`` and the logs
    (:func:`stage_loggers`). With ``resume`` and a ``last.ckpt`` there, training continues from it. The
    ``last`` stage of a run draws its best- and worst-ranked test queries.
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
    latest = ModelCheckpoint(dirpath=stage_dir, filename=LAST.removesuffix(".ckpt"), save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks: list[Any] = [evaluation, checkpoint, latest]
    if cfg.progress_bar:
        callbacks.append(RichProgressBar())
    trainer_config = {**cfg.trainer, **stage.trainer}
    logger_spec = trainer_config.pop("logger", True)
    trainer_args = {
        "logger": stage_loggers(logger_spec, stage_dir, _log_version(stage_dir, resume)),
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
    write_atomic(
        stage_dir / "config.yaml",
        yaml.safe_dump({"stage": name, "model": {"class_path": f"{type(model).__module__}.{type(model).__name__}", "init_args": _plain(model.hparams)}, "data": cfg.data, "trainer": {**{k: v for k, v in trainer_args.items() if k not in ("callbacks", "logger", "plugins")}, "logger": logger_spec}}, sort_keys=False),
    )
    # Atomic checkpoint writes and weights_only reads, unless the config brings its own plugins.
    trainer_args.setdefault("plugins", [SafeCheckpointIO()])
    trainer = L.Trainer(**trainer_args)
    started = time.perf_counter()
    if stage.max_epochs != 0 or stage.max_steps > 0:
        resume_from = stage_dir / LAST if resume and (stage_dir / LAST).is_file() else None
        if resume_from is not None:
            log.info("stage %s: resuming from %s", name, resume_from)
        trainer.fit(model, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
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


def stage_loggers(spec: Any, stage_dir: Path, version: str = "logs") -> Any:
    """The ``logger`` of a stage's Trainer, from ``trainer: {logger: ...}`` (a stage's own ``trainer`` wins).

    ``true`` (the default): a ``CSVLogger`` writing ``stage_dir/<version>`` (``logs``, or ``logs-resumed-<n>``). ``false`` / ``null``: no logger. A
    Lightning logger's name (``TensorBoardLogger``) or any class path, ``{class_path, init_args}``, or a list of
    these: those loggers, with ``save_dir`` set to the stage folder when the class takes one and the config
    does not give it, so that each stage logs under its own folder. Anything else is an error naming the key.
    """
    if spec is True:
        return CSVLogger(stage_dir, name="", version=version)
    if spec is False or spec is None:
        return False
    if isinstance(spec, list):
        return [stage_loggers(item, stage_dir, version) for item in spec]
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


def _log_version(stage_dir: Path, resume: bool) -> str:
    """``logs``, or for a resumed stage a new ``logs-resumed-<n>``: the CSV logger rewrites its folder's
    metrics file, and the interrupted part's logs must not be lost."""
    if not (resume and (stage_dir / LAST).is_file() and (stage_dir / "logs").exists()):
        return "logs"
    n = 1
    while (stage_dir / f"logs-resumed-{n}").exists():
        n += 1
    return f"logs-resumed-{n}"


def _plain(value: Any) -> Any:
    """Hyper-parameters as plain YAML-able data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def check_config(cfg: PipelineConfig, skip: tuple[str, ...] = ()) -> None:
    """Everything that can be checked before a stage trains: stage names, each stage's model arguments and
    its fusion. A mistake in Stage III's config must not wait for Stages I and II to finish."""
    unknown = sorted(set(cfg.stages) - set(STAGE_ORDER))
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} in config; stages are {list(STAGE_ORDER)}")
    for name in STAGE_ORDER:
        stage = cfg.stages.get(name, StageConfig())
        if not stage.enabled or name in skip:
            continue
        parameters = _init_parameters(STAGES[name])
        unknown_args = sorted(set(stage.model) - set(parameters))
        if unknown_args:
            raise PipelineError(
                f"stage {name}: model: unknown argument(s) {unknown_args} for {STAGES[name].__name__}; "
                f"known: {', '.join(sorted(parameters))}"
            )
        try:
            check_fusion(stage.model.get("fusion", parameters["fusion"].default))
        except (ValueError, TypeError) as err:
            raise PipelineError(f"stage {name}: model.fusion: {err}") from None


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` forwarded to the base classes."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in parameters:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return found


def _run_config(cfg: PipelineConfig, skip: tuple[str, ...]) -> dict[str, Any]:
    """What decides a run's results (not where it goes or how it shows progress), as plain JSON data."""
    config = {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "overwrite", "progress_bar")}
    return json.loads(json.dumps({**config, "skip": sorted(skip)}, sort_keys=True, default=str))


class _UnreadableRecord(ValueError):
    """A JSON record that cannot be read, or holds no JSON object."""


def _load_record(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (e.g. cut short by a crash: ``_UnreadableRecord`` saying why)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _UnreadableRecord(str(err)) from None
    if not isinstance(data, dict):
        raise _UnreadableRecord(f"it holds a JSON {type(data).__name__}, not an object")
    return data


def _read_record(path: Path, otherwise: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` (with a warning saying ``otherwise``) if it cannot be read."""
    try:
        return _load_record(path)
    except _UnreadableRecord as err:
        log.warning("%s is incomplete or unreadable (%s): %s", path, err, otherwise)
        return None


def _finished_results(path: Path) -> bool:
    """Whether ``results.json`` is there and complete; a truncated or unreadable one is not (and says so)."""
    if not path.exists():
        return False
    results = _read_record(path, "the run is not finished; resuming it")
    if results is None:
        return False
    if not isinstance(results.get("stages"), dict):
        log.warning("%s holds no stage results: the run is not finished; resuming it", path)
        return False
    return True


def _finished_stage(stage_dir: Path) -> dict[str, Any] | None:
    """The outcome of a stage that was trained and tested in an earlier, interrupted invocation."""
    path = stage_dir / OUTCOME
    if not path.is_file():
        return None
    outcome = _read_record(path, "running the stage again")
    if outcome is not None and not Path(str(outcome.get("checkpoint", ""))).is_file():
        log.warning("%s names no existing checkpoint; running the stage again", path)
        return None
    return outcome


def _claim_run_dir(run_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Record the run's config; refuse a directory that holds a run of another config (unless ``overwrite``)."""
    path = run_dir / RUN_CONFIG
    if path.is_file() and not overwrite:
        try:
            recorded = _load_record(path)
        except _UnreadableRecord as err:
            raise PipelineError(f"{path} is unreadable ({err}); choose another run_dir or set overwrite: true") from None
        if recorded != config:
            keys = sorted(k for k in set(recorded) | set(config) if recorded.get(k) != config.get(k))
            raise PipelineError(
                f"{run_dir} holds an unfinished run with another configuration (differs in: {', '.join(keys)}); "
                "run it again with the same config to resume it, choose another run_dir, or set overwrite: true"
            )
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def run_progressive(cfg: PipelineConfig, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    if _finished_results(run_dir / "results.json") and not cfg.overwrite:
        raise FileExistsError(f"{run_dir} already holds a finished run (results.json); choose another run_dir or set overwrite: true")
    check_config(cfg, skip)
    run_dir.mkdir(parents=True, exist_ok=True)
    _claim_run_dir(run_dir, _run_config(cfg, skip), cfg.overwrite)
    results: dict[str, Any] = {"config": asdict(cfg), "stages": {}}
    previous: str | None = None
    running = [n for n in STAGE_ORDER if cfg.stages.get(n, StageConfig()).enabled and n not in skip]
    reuse = not cfg.overwrite  # once a stage trains in this invocation, what later stages left is stale
    for name in STAGE_ORDER:
        stage = cfg.stages.get(name, StageConfig())
        if name not in running:
            results["stages"][name] = {"skipped": True}
            continue
        stage_dir = run_dir / f"stage-{name}"
        outcome = _finished_stage(stage_dir) if reuse else None
        if outcome is not None:
            log.info("stage %s: finished in an earlier run (%s); not run again", name, stage_dir / OUTCOME)
        else:
            log.info("stage %s (init_from=%s)", name, previous)
            outcome = run_stage(name, cfg, stage, previous, run_dir, last=name == running[-1], resume=reuse)
            write_atomic(stage_dir / OUTCOME, json.dumps(outcome, indent=2) + "\n")
            reuse = False
        results["stages"][name] = outcome
        previous = outcome["checkpoint"]
    write_atomic(run_dir / "results.md", results_markdown(results))
    write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")  # last: its presence means done
    return results


def composed_of(outcome: Mapping[str, Any]) -> ProtocolResult | None:
    """The composed protocol of a stage outcome of ``results.json`` (read from its structured
    ``evaluation``); Stage I and II's own image<->text protocols are left out. ``None`` without one."""
    if outcome.get("skipped") or "evaluation" not in outcome:
        return None
    return EvaluationResult.from_dict(outcome["evaluation"]).composed()


def results_markdown(results: dict[str, Any]) -> str:
    """R@1/R@10/R@50 per category, averages and the mean adaptive weights after each stage."""
    rows = [
        (f"{name} ({outcome.get('fusion', '?')})", composed_of(outcome), outcome.get("seconds"))
        for name, outcome in results["stages"].items()
        if not outcome.get("skipped")
    ]
    subsets = next(([s for s in c.subsets if s] for _, c, _ in rows if c is not None), [])
    header = ["after stage (fusion)"] + [f"{c} R@{k}" for c in subsets for k in (1, 10, 50)]
    header += ["avg R@10", "avg R@50", "mean", "w_img", "w_txt", "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, composed, seconds in rows:
        per_subset = composed.subsets if composed is not None else {}
        summary = composed.summary if composed is not None else {}
        cells = [label] + [_fmt(per_subset.get(c, {}).get(f"R@{k}")) for c in subsets for k in (1, 10, 50)]
        cells += [_fmt(summary.get(f"R@{k}")) for k in (10, 50)]
        cells += [_fmt(composed.score if composed is not None else None), _fmt(summary.get("w_img"), 3), _fmt(summary.get("w_txt"), 3)]
        cells += [_fmt(seconds, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    protocol = next((c.protocol for _, c, _ in rows if c is not None), "?")
    note = (
        f"\nProtocol `{protocol}`, test split (FashionIQ-style: val files). Stages I and II use the fixed-sum "
        "fusion, so their rows are the fixed-sum zero-shot baseline after that stage.\n"
    )
    return "\n".join(lines) + "\n" + note + breakdown_markdown(results)


def breakdown_markdown(results: dict[str, Any]) -> str:
    """The composed results per value of each breakdown attribute (the datamodule's ``breakdown``), after
    each stage: averaged over the subsets that have the value. Empty without a breakdown."""
    lines: list[str] = []
    for name, outcome in results["stages"].items():
        composed = composed_of(outcome)
        if composed is None:
            continue
        for attribute, groups in composed.breakdown_summary.items():
            for value, m in groups.items():
                score = [m[k] for k in composed.headline if k in m]
                cells = [f"{name} ({outcome.get('fusion', '?')})", f"{attribute}={value}", _fmt(m.get("queries"), 0)]
                cells += [_fmt(m.get(f"R@{k}")) for k in (1, 10, 50)]
                cells += [_fmt(sum(score) / len(score) if score else None), _fmt(m.get("w_img"), 3)]
                lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    header = "| after stage (fusion) | group | queries | R@1 | R@10 | R@50 | mean | w_img |\n|---|---|---|---|---|---|---|---|\n"
    return "\nBy query attribute (the datamodule's `breakdown`; averaged over the subsets that have the value):\n\n" + header + "\n".join(lines) + "\n"


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
        composed = composed_of(outcome)
        m = composed.summary if composed is not None else {}
        table.add_row(
            name, outcome["fusion"], _fmt(m.get("R@1")), _fmt(m.get("R@10")), _fmt(m.get("R@50")),
            _fmt(composed.score if composed is not None else None), _fmt(m.get("w_img"), 3), _fmt(outcome["seconds"], 0),
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
        try:
            results = run_progressive(cfg, skip)
        except PipelineError as err:
            print(f"ctiir progressive: error: {err}", file=sys.stderr)
            return 2
        print_summary(results)
        print(f"results: {Path(cfg.run_dir) / 'results.md'}")
        return 0

    return run_command(parser, resolve_config_args(sys.argv[1:] if argv is None else argv), progressive)
