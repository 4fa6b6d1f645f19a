"""Reading and writing checkpoints: never run code from a file, never leave a half-written one.

- :func:`load_checkpoint` is how ctiir reads a checkpoint: ``torch.load(weights_only=True)`` (tensors and
  plain Python data only; a pickled object that would run code is refused, not executed), with a short
  allow-list of harmless types (:data:`SAFE_GLOBALS`) that Lightning or a user's hyper-parameters may hold.
  Every failure is a :class:`CheckpointError` naming the file and what is wrong with it: missing, empty,
  truncated or corrupt, tampered (an object outside the allow-list), not a Lightning checkpoint, or without
  the hyper-parameters that rebuild a ctiir model.
- :class:`SafeCheckpointIO` is the Lightning ``CheckpointIO`` plugin that ``ctiir progressive`` and
  ``ctiir fit`` use: it writes each checkpoint to a temporary file in the checkpoint's own folder and renames
  it into place (``ctiir.io.atomic_open``), so a run killed while saving leaves the previous checkpoint
  intact; and it reads with :func:`load_checkpoint`. (Lightning's own ``TorchCheckpointIO`` writes through
  fsspec, whose local "transaction" stages the file in the system temporary folder and then moves it: on
  another file system that move is a copy over the old file, not a rename.)

docs/robustness.md says where ``weights_only=True`` cannot be used, and why.
"""

from __future__ import annotations

import logging
import pathlib
import pickle
import random
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.data import AttributeDict

from ctiir.io import atomic_open

log = logging.getLogger(__name__)

# Harmless types that unpickle without running code: paths (a hyper-parameter given as a Path) and
# Lightning's AttributeDict (hyper-parameters of older Lightning versions).
SAFE_GLOBALS: list[Any] = [
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    AttributeDict,
]
LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
# What rebuilds a ctiir model; without them ``load_from_checkpoint`` would build the defaults.
STAGE_HPARAMS = ("backbone", "fusion")
RNG_KEY = "ctiir_rng_states"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and the problem."""


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The first sentence of an error message: torch's go on for lines of generic advice."""
    text = str(err).strip().splitlines()
    return (text[0].split(". ")[0] if text else type(err).__name__)[:limit]


def _refused_global(message: str) -> str | None:
    """The global that ``weights_only`` refused (``os.makedirs``), from torch's message, if it names one."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device | Callable | Mapping | None = "cpu",
    *,
    mmap: bool = False,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; any failure is a ``CheckpointError`` naming it.

    ``mmap=True`` maps the tensors instead of reading them (cheap, for checking a file before Lightning loads
    it); a file in the pre-1.6 format, which cannot be mapped, is then read normally. ``weights_only=False``
    is only for a caller who asked for it explicitly (a trusted file holding pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint (was its writing interrupted?)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
            except RuntimeError as err:
                if not mmap or "mmap" not in str(err):
                    raise
                checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        message = str(err)
        refused = _refused_global(message)
        if refused is not None or "call reduce" in message or "Unsupported class" in message:
            what = f" ({refused})" if refused else ""
            raise CheckpointError(
                f"{path}: refused: it holds a Python object{what} that loading would have to run as code. ctiir "
                "loads checkpoints with torch.load(weights_only=True) (tensors and plain data only); a file written "
                "by ctiir or Lightning never needs more, so this one was tampered with or is not a checkpoint"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", message)
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not a torch file): "
            f"{detail.group(1).strip() if detail else _first_line(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt or truncated?): {type(err).__name__}: {_first_line(err)}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint (a dict)")
    return checkpoint


def check_lightning(checkpoint: Mapping[str, Any], path: str | Path, keys: Sequence[str] = LIGHTNING_KEYS) -> None:
    """A Lightning checkpoint has ``pytorch-lightning_version`` and ``state_dict``; name what is missing."""
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        found = ", ".join(repr(k) for k in list(checkpoint)[:8]) or "none"
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint: no {' or '.join(repr(k) for k in missing)} (keys found: {found}). "
            "Save checkpoints with a Trainer (ModelCheckpoint, trainer.save_checkpoint), not torch.save of a dict"
        )
    if "state_dict" in keys and not isinstance(checkpoint["state_dict"], Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(checkpoint['state_dict']).__name__}, not a mapping")


def check_stage_hparams(checkpoint: Mapping[str, Any], path: str | Path, given: Mapping[str, Any] | None = None) -> None:
    """A ctiir stage checkpoint records how to rebuild its model; refuse one that does not.

    Without ``hyper_parameters`` (or without ``backbone`` / ``fusion`` in them) ``load_from_checkpoint``
    would build the defaults, and, whenever the shapes happened to match, evaluate the weights with the
    wrong fusion or preprocessing without a word. ``given``: arguments passed to ``load_from_checkpoint``,
    which may supply what is missing.
    """
    hparams = checkpoint.get("hyper_parameters")
    supplied = set(given or {})
    if not isinstance(hparams, Mapping) or not hparams:
        missing = [k for k in STAGE_HPARAMS if k not in supplied]
        if missing:
            raise CheckpointError(
                f"{path}: no 'hyper_parameters': the checkpoint does not say which backbone, fusion and preprocessing "
                "its weights were trained with, so loading it would silently use the defaults. Save it with a ctiir "
                "stage (which records them), or pass them to load_from_checkpoint (missing: "
                f"{', '.join(missing)})"
            )
        return
    missing = [k for k in STAGE_HPARAMS if k not in hparams and k not in supplied]
    if missing:
        raise CheckpointError(
            f"{path}: 'hyper_parameters' has no {' or '.join(repr(k) for k in missing)}: cannot rebuild the model it "
            f"was trained with (keys found: {', '.join(sorted(map(str, hparams))) or 'none'})"
        )
    if "preprocess" not in hparams and "preprocess" not in supplied:
        log.warning("%s records no preprocessing; evaluation uses the backbone's own transforms", path)


def rng_states() -> dict[str, Any]:
    """The process-wide RNG states (torch CPU and CUDA, Python, NumPy) as tensors and plain data, so that a
    checkpoint holding them still loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` saved (a CUDA state only where CUDA is in use)."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes in the checkpoint's folder and ``weights_only`` reads.

    Use it with ``L.Trainer(plugins=[SafeCheckpointIO()])``; ``ctiir progressive`` and ``ctiir fit`` do.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)  # remote storage: fsspec's own transaction
            return
        with atomic_open(str(path).removeprefix("file://"), "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:  # asked for explicitly: a trusted file with pickled objects
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        local = str(path).removeprefix("file://")
        checkpoint = load_checkpoint(local, map_location=map_location)
        check_lightning(checkpoint, local)
        return checkpoint
