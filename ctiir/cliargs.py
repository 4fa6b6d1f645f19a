"""The command-line convention of ctiir's own subcommands, in one place.

``ctiir fit|validate|test|predict`` are LightningCLI; ctiir's own subcommands (``synth``, ``progressive``,
``check-data``, ``cirr-submission``, ``config``, and any new one) follow the same conventions, so that a
user learns one spelling:

- parsed by jsonargparse (what LightningCLI uses): :func:`command_parser`, then :func:`run_command`;
- options are the Python names, with underscores: ``--image_root``, ``--annotations_root``, ``--run_dir``,
  ``--batch_size``; a value follows ``=`` or a space (``--root=/data`` or ``--root /data``);
- booleans take a value: ``--progress_bar=false``, ``--overwrite=true`` (as ``--trainer.fast_dev_run=true``);
- lists are YAML lists or appended items: ``--splits=[train,val]``, ``--splits+=val``;
- ``--config FILE`` reads the same options from YAML and ``--print_config`` prints them;
- progress bars: ``--progress_bar`` (:func:`add_progress_bar`), true by default; there is no ``--quiet``;
- exit codes: 0 done (or clean), 1 problems found (``check-data``) or the work failed on the data,
  2 a usage error (a bad option or value, a file that must exist and does not), reported in a few lines.

This module imports jsonargparse only inside its functions, so the modules that define the commands stay
import-light (``ctiir synth --help`` does not wait for torch).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

# Lines of jsonargparse's union-type reports that never hold the cause: the Optional alternative that the
# user did not mean, the list of subtypes, the type of the value.
_NOISE = re.compile(
    r"^\s*(- Expected a <class 'NoneType'>|Subtypes: .*|Given value type: .*|Errors:"
    r"|Does not validate against any of the Union subtypes)\s*$"
)


def compact_parser_message(message: str) -> str:
    """jsonargparse's parse error without the lines that never hold the cause, and without repeats."""
    seen: set[str] = set()
    lines = []
    for line in message.splitlines():
        if _NOISE.match(line) or (line.strip() and line in seen):
            continue
        seen.add(line)
        lines.append(line)
    return "\n".join(lines).strip()


def command_parser(
    command: str,
    description: str | None = None,
    config_help: str = "a YAML file of these options (`--print_config` writes one)",
) -> ArgumentParser:
    """The parser of ``ctiir <command>``: jsonargparse, errors raised (not exited), ``--config`` for YAML.

    No abbreviated options: ``ctiir index --device=cpu`` would otherwise be taken for ``--devices=cpu`` (a
    Lightning error deep in the run); an option is spelled out or is a usage error.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=f"ctiir {command}", description=description, default_env=False, exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    return parser


def add_progress_bar(parser: ArgumentParser, what: str = "progress bars") -> None:
    """The one progress option: ``--progress_bar`` (true by default; ``--progress_bar=false`` for logs and CI)."""
    parser.add_argument("--progress_bar", type=bool, default=True, help=f"show {what} (--progress_bar=false: none)")


def usage_error(prog: str, message: str) -> int:
    """Print a usage error the way every ctiir command does, and return its exit code (2)."""
    print(f"{prog}: error: {message}\n(`{prog} --help` lists the options)", file=sys.stderr)
    return EXIT_USAGE


def run_command(parser: ArgumentParser, argv: Sequence[str] | None, body: Callable[[Namespace], int | None]) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run ``body`` on the options; return the exit code.

    A bad command line, and a ``parser.error(...)`` called by ``body`` (a file that must exist, two options
    that exclude each other), is a usage error: a short message and exit code 2, never a traceback.
    ``--help`` and ``--print_config`` exit 0 as jsonargparse makes them.
    """
    from jsonargparse import ArgumentError

    args: Any = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parser.parse_args(args)
        return int(body(options) or EXIT_OK)
    except ArgumentError as err:
        return usage_error(parser.prog, compact_parser_message(str(err)))


def add_device(parser: ArgumentParser) -> None:
    """The device option of commands that run a model outside a trainer: ``--device auto|cpu|cuda|cuda:N``."""
    parser.add_argument(
        "--device", type=str, default="auto", help="where the model runs: auto (CUDA when available), cpu, cuda, cuda:N"
    )


def resolve_device(value: str) -> Any:
    """``--device``'s value as a ``torch.device``; ``auto`` is CUDA when available. A device that is not
    there is a ``ValueError`` naming it (the command reports it as a usage error)."""
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise ValueError(f"--device {value!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {value}: CUDA is not available here; use --device=cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {value}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device {value!r}: ctiir commands run on cpu or cuda")
    return device
