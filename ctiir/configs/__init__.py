"""The example configs shipped in the package, and the rule that lets a bare name stand for one.

They live in the package (not in a checkout-only ``examples/`` folder) so that ``pip install ctiir`` users can
run the README's commands: ``ctiir fit -c stage3``, ``ctiir progressive --config synthetic``. ``ctiir config``
lists them and ``ctiir config NAME`` prints one, to copy and edit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"
CONFIG_FLAGS = ("-c", "--config")
# A bare name: no folder, no inline YAML ("{...}"), e.g. "stage3" or "stage3.yaml".
_BARE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def packaged_configs() -> dict[str, Path]:
    """Name -> file of every packaged config (``synthetic`` -> ``.../ctiir/configs/synthetic.yaml``)."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob(f"*{SUFFIX}"))}


def resolve_config_path(value: str) -> str:
    """A ``--config`` value as a path: an existing file wins; else a bare name is a packaged config.

    Anything else (a path that does not exist, inline YAML) comes back unchanged for the config parser to read
    or to reject with its own message. A bare name that is neither a file nor a packaged config is an error
    listing the packaged names, rather than jsonargparse's "not a valid path or YAML" about the word.
    """
    if Path(value).expanduser().exists() or not _BARE_NAME.match(value):
        return value
    name = value[: -len(SUFFIX)] if value.endswith(SUFFIX) else value
    configs = packaged_configs()
    if name not in configs:
        raise FileNotFoundError(
            f"config {value!r}: no such file, and no packaged config of that name; packaged configs: "
            f"{', '.join(configs)} (`ctiir config` lists them)"
        )
    return str(configs[name])


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with the value of every ``-c``/``--config`` (``-c X``, ``--config X``, ``--config=X``) resolved."""
    out = list(args)
    for i, arg in enumerate(out):
        flag, sep, value = arg.partition("=")
        if sep and flag in CONFIG_FLAGS:
            out[i] = f"{flag}={resolve_config_path(value)}"
        elif arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


def _summary(path: Path) -> str:
    """The config's first comment line, which says what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip().rstrip(":")
    return ""


def config_main(argv: list[str] | None = None) -> int:
    """``ctiir config [NAME]``: list the packaged configs, or print one (``ctiir config stage3 > mine.yaml``)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="ctiir config", description=config_main.__doc__, default_env=False)
    parser.add_argument("name", nargs="?", default=None, help="a packaged config; without it, list them")
    name = parser.parse_args(argv).name
    configs = packaged_configs()
    if name is None:
        width = max(len(n) for n in configs)
        for config, path in configs.items():
            print(f"{config:<{width}}  {_summary(path)}")
        print(f"\n(in {CONFIG_DIR}; `ctiir fit -c NAME`, `ctiir progressive --config NAME`)")
        return 0
    key = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    if key not in configs:
        parser.error(f"no packaged config {name!r}; packaged configs: {', '.join(configs)}")
    print(configs[key].read_text(encoding="utf-8"), end="")
    return 0
