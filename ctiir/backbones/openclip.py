"""open_clip backbones: any open_clip architecture (``openclip:<config>``) and ctiir's tiny offline model.

Every build goes through one path: resolve the architecture (``model_cfg``), the preprocessing and a weights
file, then let ``open_clip.create_model`` build and load them from a ``local-dir:`` folder. Built-in names,
explicit config dicts (a checkpoint's spec) and user folders are therefore all loaded by open_clip's own
code (state-dict conversion, strict loading), and the spec can always store the resolved ``model_cfg`` and
``preprocess_cfg`` so that a checkpoint rebuilds without the original folder, tag or a newer open_clip.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from ctiir.backbones.base import Backbone
from ctiir.backbones.registry import register_backbone

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_CONFIG = "ctiir-tiny"
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
CLIP_VOCAB_SIZE = 49408

# open_clip keeps its own name -> config registry; adding our folder is what makes ``openclip:ctiir-tiny`` work.
open_clip.add_model_config(CONFIG_DIR)

_TRUE = {"1", "ON", "YES", "TRUE"}


class HubOfflineError(RuntimeError):
    """Weights or a model were asked for from the Hugging Face Hub while offline, and are not cached."""


def hub_is_offline() -> bool:
    """Offline per huggingface_hub (read at its import) or per the environment now.

    The environment is read again because a process may set ``HF_HUB_OFFLINE`` after importing the hub; the
    hub then still goes online, so we must refuse before calling it rather than trust it to fail fast.
    """
    env = (os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(hf_constants.HF_HUB_OFFLINE) or any(value in _TRUE for value in env)


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of strings, or a clear error: a bare string would silently become one query per character."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"tokenize expects a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a list of strings; item {i} is {type(text).__name__}: {text!r}")
    return list(texts)


def _jsonable(value: Any) -> Any:
    """Tuples become lists: the spec must survive a JSON/YAML round trip unchanged."""
    return json.loads(json.dumps(value))


def _square_size(size: Any, where: str) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise ValueError(f"{where}: ctiir needs a square image size, got {size!r}")


def _check_model_cfg(model_cfg: Any, where: str) -> dict[str, Any]:
    if not isinstance(model_cfg, dict):
        raise TypeError(f"{where}: model_cfg must be a dict, got {type(model_cfg).__name__}")
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise ValueError(f"{where}: model_cfg lacks {missing}; it has keys {sorted(model_cfg)}")
    return model_cfg


def _builtin_cfg(config: str) -> dict[str, Any]:
    model_cfg = open_clip.get_model_config(config)
    if model_cfg is None:
        close = difflib.get_close_matches(config, open_clip.list_models(), n=5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(
            f"unknown open_clip model config {config!r}{hint} (open_clip.list_models() lists all "
            f"{len(open_clip.list_models())})"
        )
    return model_cfg


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith(("/", ".", "~"))
        or os.sep in value
        or "/" in value
        or value.lower().endswith(WEIGHT_SUFFIXES)
    )


# ---------------------------------------------------------------------------------------------- weights
def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """open_clip's ``org/repo/[file]`` convention -> (repo id, files it tries, safetensors first)."""
    repo_id, filename = os.path.split(hf_hub)
    if not filename:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _cached_tag_file(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The weights of a tag if they are already on disk, found without any network call."""
    if tag_cfg.get("hf_hub"):
        repo_id, names = _hub_candidates(tag_cfg["hf_hub"])
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        return None
    if tag_cfg.get("url"):
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(tag_cfg["url"])
        return str(target) if target.is_file() else None
    return None


def _warn_quick_gelu(config: str, tag: str, tag_cfg: dict[str, Any], model_cfg: dict[str, Any]) -> None:
    """open_clip's own check: weights trained with QuickGELU in a GELU architecture give degraded features."""
    if tag_cfg.get("quick_gelu", False) != model_cfg.get("quick_gelu", False):
        warnings.warn(
            f"open_clip weights {config}:{tag} were trained with quick_gelu={tag_cfg.get('quick_gelu', False)} but "
            f"config {config!r} has quick_gelu={model_cfg.get('quick_gelu', False)}; features will be degraded "
            f"(use the '-quickgelu' config variant)",
            UserWarning,
            stacklevel=4,
        )


def _resolve_tag(config: str | None, tag: str, model_cfg: dict[str, Any], cache_dir: str | None) -> tuple[str, dict]:
    """(weights file, preprocessing of the tag). Offline, only the local cache is looked at."""
    if config is None:
        raise ValueError(f"pretrained tag {tag!r} needs an open_clip config name (e.g. openclip:ViT-B-32)")
    tag_cfg = open_clip.get_pretrained_cfg(config, tag)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(config)
        raise ValueError(
            f"pretrained {tag!r} is neither an existing weights file nor an open_clip tag of {config!r}; "
            f"known tags: {known or '(none)'}"
        )
    source = tag_cfg.get("hf_hub") or tag_cfg.get("url")
    if hub_is_offline():
        path = _cached_tag_file(tag_cfg, cache_dir)
        if path is None:
            raise HubOfflineError(
                f"open_clip weights {config}:{tag} ({source}) are not in the local cache and HF_HUB_OFFLINE is "
                f"set, so they cannot be downloaded; fetch them once with network access, or pass a local "
                f"weights file or 'local-dir:/path' as pretrained"
            )
        _warn_quick_gelu(config, tag, tag_cfg, model_cfg)
        return path, tag_cfg
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001  hub / urllib raise many types; all become one clear error
        raise RuntimeError(f"could not download open_clip weights {config}:{tag} from {source}: {err}") from err
    if not path:
        raise RuntimeError(f"open_clip tag {config}:{tag} names no download source")
    _warn_quick_gelu(config, tag, tag_cfg, model_cfg)
    return path, tag_cfg


def _weights_file(path: str) -> str:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} not found")
    return str(resolved.resolve())


def _read_local_dir(path: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(folder, model_cfg, preprocess_cfg) of an open_clip hub-layout folder, with weights checked present."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrained {LOCAL_DIR_PREFIX}{path}: directory {folder} not found")
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"pretrained {LOCAL_DIR_PREFIX}{path}: {config_file} not found")
    try:
        content = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    if not isinstance(content, dict) or "model_cfg" not in content:
        raise ValueError(f"{config_file} has no 'model_cfg' key")
    model_cfg = _check_model_cfg(content["model_cfg"], str(config_file))
    if not any(p.suffix in (".safetensors", ".bin", ".pth") for p in folder.iterdir()):
        raise FileNotFoundError(
            f"pretrained {LOCAL_DIR_PREFIX}{path}: no weights file (*.safetensors, *.bin, *.pth) in {folder}"
        )
    return folder, model_cfg, dict(content.get("preprocess_cfg") or {})


# ---------------------------------------------------------------------------------------------- tokenizer
def _make_tokenizer(config: str | None, model_cfg: dict[str, Any], local_dir: Path | None) -> Any:
    """open_clip's tokenizer for this architecture, at its context length."""
    text_cfg = model_cfg["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    if local_dir is not None:
        return open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{local_dir}", context_length=context_length)
    if config is not None and open_clip.get_model_config(config) is not None:
        return open_clip.get_tokenizer(config, context_length=context_length)
    if text_cfg.get("hf_tokenizer_name"):
        # A spec rebuilt without its folder: the tokenizer named by the architecture itself.
        return HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **(text_cfg.get("tokenizer_kwargs") or {}),
        )
    return open_clip.SimpleTokenizer(context_length=context_length, **(text_cfg.get("tokenizer_kwargs") or {}))


def _vocab_size(tokenizer: Any) -> int:
    if isinstance(getattr(tokenizer, "vocab_size", None), int):
        return tokenizer.vocab_size
    return len(tokenizer.tokenizer)


# ---------------------------------------------------------------------------------------------- backbone
class OpenCLIPBackbone(Backbone):
    """An open_clip model behind ctiir's backbone contract.

    The model's own ``logit_scale`` / ``logit_bias`` are frozen: ctiir's stages own their loss and
    temperature, and a trainable parameter that never gets a gradient breaks DDP. Their pretrained value is
    kept as :attr:`init_logit_scale` so that a stage can start its temperature there.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, model_cfg: dict[str, Any], spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.embed_dim = int(model_cfg["embed_dim"])
        self.context_length = int(model_cfg["text_cfg"].get("context_length", 77))
        self.vocab_size = _vocab_size(tokenizer)
        model_vocab = int(model_cfg["text_cfg"].get("vocab_size", CLIP_VOCAB_SIZE))
        if self.vocab_size > model_vocab:
            raise ValueError(
                f"open_clip backbone {spec.get('config') or spec['name']}: the tokenizer has {self.vocab_size} "
                f"tokens but the text tower embeds only {model_vocab}"
            )
        preprocess = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), spec["preprocess_cfg"]))
        self.image_size = _square_size(preprocess.size, f"open_clip backbone {spec['name']}")
        self.train_transform = image_transform_v2(preprocess, is_train=True)
        self.eval_transform = image_transform_v2(preprocess, is_train=False)
        self.init_logit_scale = float(model.logit_scale.detach().reshape(-1)[0])
        model.logit_scale.requires_grad_(False)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.requires_grad_(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(check_texts(texts)).long()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def _create_model(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], weights: str | None) -> torch.nn.Module:
    """Let open_clip build (and load) the model from a throw-away ``local-dir:`` folder.

    ``create_model`` takes an architecture only by name or by folder; a folder with the config and a link
    to the weights gives it an explicit dict without touching its global config registry.
    """
    with tempfile.TemporaryDirectory(prefix="ctiir-openclip-") as tmp:
        folder = Path(tmp)
        content = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (folder / "open_clip_config.json").write_text(json.dumps(content), encoding="utf-8")
        if weights is not None:
            name = HF_SAFE_WEIGHTS_NAME if weights.endswith(".safetensors") else HF_WEIGHTS_NAME
            os.symlink(weights, folder / name)
        try:
            return open_clip.create_model(
                f"{LOCAL_DIR_PREFIX}{folder}", pretrained_image=False, pretrained_text=False
            )
        except Exception as err:  # noqa: BLE001  torch.load / safetensors / strict loading: one clear error
            if weights is None:
                raise
            raise RuntimeError(f"could not load open_clip weights {weights}: {err}") from err


def build_openclip_backbone(
    name: str,
    config: str | None = None,
    pretrained: str | None = None,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> OpenCLIPBackbone:
    """Resolve architecture, preprocessing and weights, then build. ``name`` is the registry entry for the spec."""
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
    if model_cfg is not None:
        model_cfg = _check_model_cfg(_jsonable(model_cfg), f"backbone {name!r}")
    weights: str | None = None
    local_dir: Path | None = None
    overlay: dict[str, Any] = {}

    if pretrained is not None and pretrained.startswith(LOCAL_DIR_PREFIX):
        local_dir, dir_cfg, overlay = _read_local_dir(pretrained[len(LOCAL_DIR_PREFIX):])
        pretrained = f"{LOCAL_DIR_PREFIX}{local_dir.resolve()}"  # the spec records where, whatever the cwd
        if model_cfg is not None and model_cfg != dir_cfg:
            raise ValueError(f"backbone {name!r}: model_cfg differs from the one in {local_dir}/open_clip_config.json")
        if model_cfg is None and config is not None and _builtin_cfg(config) != dir_cfg:
            raise ValueError(
                f"backbone {name!r}: {local_dir}/open_clip_config.json holds another architecture than "
                f"open_clip config {config!r}; leave config out to use the folder's"
            )
        model_cfg = dir_cfg
    else:
        if model_cfg is None:
            if config is None:
                raise ValueError(f"backbone {name!r} needs config= (an open_clip model name) or model_cfg=")
            model_cfg = _builtin_cfg(config)
        if pretrained is not None and pretrained.startswith(HF_HUB_PREFIX):
            raise ValueError(
                f"pretrained {pretrained!r}: hf-hub: sources are not supported; download the repository and "
                f"pass '{LOCAL_DIR_PREFIX}/path/to/it'"
            )
        if pretrained is not None:
            if Path(pretrained).expanduser().is_file() or _looks_like_path(pretrained):
                weights = pretrained = _weights_file(pretrained)
            else:
                weights, overlay = _resolve_tag(config, pretrained, model_cfg, cache_dir)

    resolved_pp = merge_preprocess_dict(asdict(PreprocessCfg()), overlay)
    if preprocess_cfg is not None:
        unknown = sorted(set(preprocess_cfg) - set(resolved_pp))
        if unknown:
            raise ValueError(f"backbone {name!r}: unknown preprocess_cfg keys {unknown}; known: {sorted(resolved_pp)}")
        resolved_pp = merge_preprocess_dict(resolved_pp, preprocess_cfg)

    if local_dir is not None:
        try:
            model = open_clip.create_model(f"{LOCAL_DIR_PREFIX}{local_dir}", pretrained_image=False, pretrained_text=False)
        except Exception as err:  # noqa: BLE001  as in _create_model: name the folder whatever failed
            raise RuntimeError(f"could not load open_clip model from {LOCAL_DIR_PREFIX}{local_dir}: {err}") from err
        if preprocess_cfg is not None:
            open_clip.set_model_preprocess_cfg(model, {**resolved_pp, "size": model.visual.image_size})
    else:
        model = _create_model(model_cfg, _jsonable(resolved_pp), weights)
    final_pp = _jsonable(open_clip.get_model_preprocess_cfg(model))
    if preprocess_cfg is not None and "size" in preprocess_cfg:
        asked, actual = _square_size(_jsonable(preprocess_cfg["size"]), name), _square_size(final_pp["size"], name)
        if asked != actual:
            raise ValueError(
                f"backbone {name!r}: preprocess_cfg size {asked} differs from the model's input size {actual}"
            )
    tokenizer = _make_tokenizer(config, model_cfg, local_dir)

    spec: dict[str, Any] = {"name": name}
    if name != "tiny":
        spec["config"] = config
        spec["cache_dir"] = cache_dir
    spec.update(pretrained=pretrained, model_cfg=model_cfg, preprocess_cfg=final_pp)
    return OpenCLIPBackbone(model, tokenizer, model_cfg, spec)


@register_backbone("openclip", test_kwargs={"config": TINY_CONFIG})
def openclip_backbone(
    config: str | None = None,
    pretrained: str | None = None,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> OpenCLIPBackbone:
    """Any open_clip architecture: ``build_backbone("openclip:ViT-B-32", pretrained="openai")``.

    Args:
        config: an open_clip model name (``open_clip.list_models()``), including ``ctiir-tiny``.
        pretrained: ``None`` (random init), an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``), a
            weights file (.pt/.pth/.bin/.safetensors) or ``"local-dir:/path"`` (a folder in open_clip's hub
            layout, whose ``open_clip_config.json`` then gives the architecture).
        model_cfg: an explicit open_clip architecture dict; overrides ``config`` (checkpoints store it).
        preprocess_cfg: overrides of open_clip's ``PreprocessCfg`` (mean, std, interpolation, resize_mode...).
        cache_dir: where tags are downloaded / looked up.
    """
    return build_openclip_backbone(
        "openclip",
        config=config,
        pretrained=pretrained,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
        cache_dir=cache_dir,
    )


@register_backbone("tiny", test_kwargs={})
def tiny_backbone(
    pretrained: str | None = None,
    model_cfg: dict[str, Any] | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
) -> OpenCLIPBackbone:
    """ctiir's ~2.3M-parameter CLIP (64 px, 32 text tokens) that trains in minutes on a CPU; same as ``openclip:ctiir-tiny``.

    The image tower cuts 64 px images into 16 px patches (17 tokens), 4 layers of width 128 with MLP ratio 2:
    about a fifth of the compute of the first ``tiny`` (8 px patches, 65 tokens, 6 layers, MLP ratio 4),
    measured by ``benchmarks/bench_demo.py``. Checkpoints store their ``model_cfg``, so those of the first
    ``tiny`` still load (``load_from_checkpoint``, or ``backbone={"name": "tiny", "model_cfg": ...}``).

    ``pretrained`` is ``None``, a weights file or ``"local-dir:/path"``; there are no tags to download.
    """
    return build_openclip_backbone(
        "tiny",
        config=TINY_CONFIG,
        pretrained=pretrained,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
    )
