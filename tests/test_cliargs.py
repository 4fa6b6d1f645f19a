"""One command-line convention for ctiir's own subcommands (``ctiir.cliargs``): jsonargparse, underscores,
``--progress_bar``, ``--config`` YAML, exit codes 0 / 1 / 2 and short usage errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ctiir.cli import OWN_COMMANDS, main
from ctiir.cliargs import resolve_device

# The commands that take options (``config`` takes only a name).
COMMANDS = ("synth", "progressive", "check-data", "cirr-submission", "index", "search", "serve")
# Commands with nothing to show a progress bar for: one query (search), a server that runs until stopped (serve).
WITHOUT_PROGRESS = ("search", "serve")


def help_text(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_spells_options_with_underscores_and_one_progress_flag(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = help_text(capsys, command)
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))
    assert options, text
    assert not [o for o in options if "-" in o[2:]], f"hyphenated options: {sorted(options)}"
    assert "--config" in options
    assert ("--progress_bar" in options) == (command not in WITHOUT_PROGRESS), sorted(options)
    assert not options & {"--quiet", "--no_progress", "--no-progress", "--verbose"}  # ctiir --verbose <command>


def test_own_commands_are_all_checked() -> None:
    assert set(COMMANDS) | {"config"} <= set(OWN_COMMANDS)


@pytest.mark.parametrize(
    "args, named",
    [
        (["synth", "--out", "x", "--quiet"], "--quiet"),
        (["check-data", "--dataset=shoes", "--root=.", "--no-progress"], "--no-progress"),
        (["check-data", "--dataset=shoes", "--root=.", "--annotations-root=."], "--annotations-root"),
        (["check-data", "--dataset=shoes", "--root=.", "--splits", "val"], "splits"),
        (["cirr-submission", "--ckpt=x", "--root=.", "--out=o", "--batch-size=3"], "--batch-size"),
        (["progressive", "--run-dir=x"], "--run-dir"),
        (["synth", "--out", "x", "--size=huge"], "huge"),
        (["index", "--ckpt=x", "--images=.", "--out=o", "--batch-size=3"], "--batch-size"),
        (["index", "--ckpt=x", "--images=.", "--out=o", "--update"], "--update"),  # a boolean takes a value
        (["search", "--ckpt=x", "--index=i", "--text=t", "--json"], "--json"),
        (["search", "--ckpt=x", "--index=i", "--text=t", "--verbose"], "--verbose"),
        (["serve", "--ckpt=x", "--index=i", "--max-k=3"], "--max-k"),
        (["serve", "--ckpt=x", "--index=i", "--accelerator=cpu"], "--accelerator"),
    ],
)
def test_a_bad_command_line_is_a_short_usage_error(
    capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctiir {args[0]}: error: ") and named in err, err
    assert "Traceback" not in err and len(err.splitlines()) <= 6, err


def test_options_come_from_a_yaml_config_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text(yaml.safe_dump({"out": str(tmp_path / "s"), "seed": 2, "size": "tiny", "progress_bar": False}))
    assert main(["synth", "--config", str(config)]) == 0
    assert "seed=2, size='tiny'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["synth", "--config", str(config), "--seed=5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["size"] == "tiny" and printed["progress_bar"] is False


def test_device_option() -> None:
    import torch

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
