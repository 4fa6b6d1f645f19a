"""The ``ctiir`` console script.

``ctiir fit|validate|test|predict`` is a LightningCLI over any ctiir stage and datamodule (``class_path``
in YAML or ``--model``/``--data`` on the command line). ctiir's own subcommands sit beside them:
``synth``, ``progressive``, ``check-data`` and ``cirr-submission``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from lightning.pytorch.cli import LightningCLI

OWN_COMMANDS: dict[str, str] = {
    "synth": "generate the embedded synthetic benchmark (FashionIQ layout)",
    "progressive": "run Stages I -> II -> III from one YAML config and write a results table",
    "check-data": "check a dataset's annotations and images; optionally write a filtered copy",
    "cirr-submission": "write CIRR test-server submission files from a Stage III checkpoint",
    "index": "encode a folder of images (or a dataset's gallery) into a searchable index",
    "search": "search an index with an image, a text, or both; table, JSON or a picture",
    "serve": "serve an index over HTTP (POST /search, GET /images/{id}, a search page at /)",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class CTIIRCLI(LightningCLI):
    """LightningCLI with ctiir's retrieval evaluation always attached (configurable as ``--retrieval.*``)."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        from ctiir.callbacks import RetrievalEvaluation

        parser.add_lightning_class_args(RetrievalEvaluation, "retrieval")


def _own_command(name: str) -> Callable[[list[str]], int]:
    if name == "synth":
        from ctiir.datamodules.synthetic import synth_main

        return synth_main
    if name == "progressive":
        from ctiir.pipeline import progressive_main

        return progressive_main
    if name == "check-data":
        from ctiir.checkdata import check_data_main

        return check_data_main
    if name == "index":
        from ctiir.retrieval.commands import index_main

        return index_main
    if name == "search":
        from ctiir.retrieval.commands import search_main

        return search_main
    if name == "serve":
        from ctiir.retrieval.serve import serve_main

        return serve_main
    from ctiir.predict import cirr_submission_main

    return cirr_submission_main


def _overview() -> str:
    lines = ["usage: ctiir <command> [options]", "", "Lightning commands (LightningCLI; `ctiir fit --help`):"]
    lines += [f"  {c:<16} {c} a ctiir stage (-c examples/configs/<stage>.yaml)" for c in LIGHTNING_COMMANDS]
    lines += ["", "ctiir commands (`ctiir <command> --help`):"]
    lines += [f"  {c:<16} {text}" for c, text in OWN_COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ctiir.datamodules.base import CTIIRDataModule
    from ctiir.stages.base import CTIIRStage

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_overview())
        return 0 if args else 2
    if args[0] in OWN_COMMANDS:
        return int(_own_command(args[0])(args[1:]) or 0)
    if args[0] not in LIGHTNING_COMMANDS:
        print(f"ctiir: unknown command {args[0]!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    CTIIRCLI(
        CTIIRStage,
        CTIIRDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": False},
        auto_configure_optimizers=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
