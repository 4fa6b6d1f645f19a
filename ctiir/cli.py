"""The ``ctiir`` console script.

``ctiir fit|validate|test|predict`` is a LightningCLI over any ctiir stage and datamodule (``class_path``
in YAML or ``--model``/``--data`` on the command line). ctiir's own subcommands sit beside them (see
:data:`OWN_COMMANDS`).

This module imports nothing heavy: each command imports its own module when it runs, so ``ctiir --help``
and ``ctiir <own command> --help`` do not wait for Lightning. ``-c NAME`` / ``--config NAME`` may name a
config shipped in the package (``ctiir config`` lists them).

Output: routine INFO lines of the libraries (open_clip's "Parsing model identifier...", Lightning's tips)
are silenced, warnings and ctiir's own progress lines are kept; ``ctiir --verbose <command>`` (or
``CTIIR_VERBOSE=1``) shows everything, including the full traceback of a bad command line or config.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from importlib import import_module
from typing import NamedTuple


class OwnCommand(NamedTuple):
    entry: str  # "module:function"; the function takes the remaining arguments and returns an exit code
    help: str


OWN_COMMANDS: dict[str, OwnCommand] = {
    "synth": OwnCommand(
        "ctiir.datamodules.synthetic:synth_main", "generate the embedded synthetic benchmark (FashionIQ layout)"
    ),
    "progressive": OwnCommand(
        "ctiir.pipeline:progressive_main", "run Stages I -> II -> III from one YAML config and write a results table"
    ),
    "check-data": OwnCommand(
        "ctiir.checkdata:check_data_main", "check a dataset's annotations and images; optionally write a filtered copy"
    ),
    "cirr-submission": OwnCommand(
        "ctiir.predict:cirr_submission_main", "write CIRR test-server submission files from a Stage III checkpoint"
    ),
    "config": OwnCommand("ctiir.configs:config_main", "list the packaged example configs, or print one"),
    "index": OwnCommand(
        "ctiir.retrieval.commands:index_main", "encode a folder of images (or a dataset's gallery) into a searchable index"
    ),
    "search": OwnCommand(
        "ctiir.retrieval.commands:search_main", "search an index with an image, a text, or both; table, JSON or a picture"
    ),
    "serve": OwnCommand(
        "ctiir.retrieval.serve:serve_main", "serve an index over HTTP (POST /search, GET /images/{id}, a search page at /)"
    ),
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# Commands whose -c/--config may name a packaged config (ctiir.configs.resolve_config_path).
CONFIG_COMMANDS = (*LIGHTNING_COMMANDS, "progressive")
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_ENV = "CTIIR_VERBOSE"
# Lightning advertises its cloud services at every Trainer start ("💡 Tip: ... litlogger", "... litmodels").
LIGHTNING_TIP = "💡 Tip"
# Deprecation warnings about one library's use of another, which no user can act on; shown with --verbose.
# Lightning 2.6's CombinedLoader builds a torch ``LeafSpec``, which recent torch deprecates: one FutureWarning
# at every dataloader setup (``ctiir fit``, ``ctiir index``, ...).
LIBRARY_INTERNAL_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
LIGHTNING_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


def _own_command(name: str) -> Callable[[list[str]], int]:
    module, _, function = OWN_COMMANDS[name].entry.partition(":")
    return getattr(import_module(module), function)


class DropLightningTips(logging.Filter):
    """Drops Lightning's advertising lines; its other messages (devices, checkpoints, stops) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_TIP)


class OncePerRecord(logging.Filter):
    """For the root handler: skip records that a handler on their way up has already printed.

    ``lightning`` keeps its own console handler ("INFO: ...") and still propagates to the root logger, so
    without this every Lightning line would come out twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = None if record.name == "root" else logging.getLogger(record.name)
        while logger is not None and logger.parent is not None:
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(verbose: bool) -> None:
    """Standard logging configuration, once at CLI entry, before any library is imported.

    open_clip logs its per-model chatter with ``logging.info`` on the *root* logger, so the root level decides
    it: WARNING by default (warnings still show), INFO with ``--verbose``. ctiir's own loggers stay at INFO
    (DEBUG with ``--verbose``). The root handler is installed before Lightning is imported, so Lightning's
    loggers propagate (it adds handlers of its own only to a bare root), and a ``logging.basicConfig`` in a
    command is a no-op.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(OncePerRecord())
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("ctiir").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, DropLightningTips)]:
            logger.removeFilter(existing)
        if not verbose:
            logger.addFilter(DropLightningTips())
    for message in LIBRARY_INTERNAL_WARNINGS:  # "default": Python's own behaviour, put back in front by --verbose
        warnings.filterwarnings("default" if verbose else "ignore", message=message, category=FutureWarning)


def _overview() -> str:
    lines = [
        "usage: ctiir [--verbose] <command> [options]",
        "",
        "Lightning commands (LightningCLI; `ctiir fit --help`):",
    ]
    lines += [f"  {c:<16} {c} a ctiir stage (-c <a YAML file, or a name from `ctiir config`>)" for c in LIGHTNING_COMMANDS]
    lines += ["", "ctiir commands (`ctiir <command> --help`):"]
    lines += [f"  {c:<16} {command.help}" for c, command in OWN_COMMANDS.items()]
    lines += [
        "",
        f"  {'-v, --verbose':<16} show the libraries' routine log lines and full tracebacks (or {VERBOSE_ENV}=1)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes", "on")
    while args and args[0] in VERBOSE_FLAGS:
        verbose = True
        args.pop(0)
    configure_logging(verbose)
    if not args or args[0] in ("-h", "--help"):
        print(_overview())
        return 0 if args else 2
    command = args[0]
    if command not in OWN_COMMANDS and command not in LIGHTNING_COMMANDS:
        print(f"ctiir: unknown command {command!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    if command in CONFIG_COMMANDS:
        from ctiir.configs import resolve_config_args

        try:
            args = resolve_config_args(args)
        except FileNotFoundError as err:
            print(f"ctiir {command}: error: {err}", file=sys.stderr)
            return 2
    if command in OWN_COMMANDS:
        return int(_own_command(command)(args[1:]) or 0)

    from ctiir.lightning_cli import ConfigError, run_lightning

    try:
        run_lightning(args)
    except ConfigError as err:
        if verbose:
            raise
        print(
            f"ctiir {command}: error: {err}\n"
            f"(`ctiir {command} --help` lists the options; `ctiir --verbose {command} ...` shows the full traceback)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
