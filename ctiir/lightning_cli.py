"""``ctiir fit|validate|test|predict``: LightningCLI over any ctiir stage and datamodule.

Kept apart from :mod:`ctiir.cli` because importing Lightning's CLI takes seconds: ``ctiir --help`` and
ctiir's own subcommands must not pay for it.

A wrong command line or config fails inside jsonargparse, which reports it as 50 lines of usage or an
80-line chain of wrapped exceptions around the one that matters (a hub tag not cached, a logger package not
installed, a class that does not exist). :class:`ConfigError` carries that cause alone; errors raised
while training are not touched (their traceback is the useful part).
"""

from __future__ import annotations

import re
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from ctiir.callbacks import RetrievalEvaluation
from ctiir.checkpoints import SafeCheckpointIO
from ctiir.cliargs import compact_parser_message
from ctiir.datamodules.base import CTIIRDataModule
from ctiir.stages.base import CTIIRStage

_CLASS_PATH = re.compile(r"class_path[ =]'([^']+)'")


class ConfigError(Exception):
    """The command line or config could not be parsed, or a class in it could not be created.

    The message is the cause in a few lines; the original exception is ``__cause__``.
    """


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def instantiation_message(err: BaseException) -> str:
    """The innermost exception of the chain, and the class whose creation raised it when the chain names one."""
    chain = _chain(err)
    root = chain[-1]
    where = next((m.group(1) for e in reversed(chain) if (m := _CLASS_PATH.search(str(e)))), None)
    cause = f"{type(root).__name__}: {root}"
    return f"could not create {where}:\n  {cause}" if where else cause


class CTIIRCLI(LightningCLI):
    """LightningCLI with ctiir's retrieval evaluation always attached (configurable as ``--retrieval.*``)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(RetrievalEvaluation, "retrieval")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # ctiir.cli always passes the command line itself (with config names resolved), so Lightning's warning
        # about getting both `args` and sys.argv does not apply.
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as err:
            raise ConfigError(compact_parser_message(str(err))) from err

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, writing checkpoints atomically and reading them with ``weights_only=True``
        (``ctiir.checkpoints.SafeCheckpointIO``) unless the config names its own plugins."""
        if not self._get(self.config_init, "trainer", default={}).get("plugins"):
            kwargs.setdefault("plugins", [SafeCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # noqa: BLE001  any class's constructor can raise anything: keep the cause
            raise ConfigError(instantiation_message(err)) from err


def run_lightning(args: list[str]) -> None:
    """Run one Lightning subcommand (``args[0]``); raises :class:`ConfigError` for a bad command line or config."""
    CTIIRCLI(
        CTIIRStage,
        CTIIRDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": False},
        auto_configure_optimizers=False,
        parser_kwargs={"prog": "ctiir", "exit_on_error": False},
    )
