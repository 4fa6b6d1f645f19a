"""open_clip backbones: any open_clip architecture (``openclip:<config>``), hub models (``hf-hub:``) and ctiir's tiny
offline model.

Every build resolves three things, then hands them to open_clip's own code: the architecture (``model_cfg``),
the preprocessing and a weights file. The model is open_clip's ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` built
from the explicit config dict, and the weights go through ``open_clip.load_checkpoint`` (state-dict
conversion, position-embedding resizing, strict loading), as ``open_clip.create_model`` does; a user's
``local-dir:`` folder goes through ``create_model`` itself. The spec always stores the resolved ``model_cfg``
and ``preprocess_cfg``, so a checkpoint rebuilds without the original folder, tag, hub or a newer open_clip.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import open_clip
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.pretrained import download_pretrained_from_hf
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

from ctiir.backbones.base import Backbone, PixelConfig
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


def _read_open_clip_config(config_file: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) of an ``open_clip_config.json``, a local folder's or a hub repository's."""
    try:
        content = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: {config_file} is not valid JSON: {err}") from err
    if not isinstance(content, dict) or "model_cfg" not in content:
        raise ValueError(f"{where}: {config_file} has no 'model_cfg' key")
    model_cfg = _check_model_cfg(content["model_cfg"], f"{where}: {config_file}")
    return model_cfg, dict(content.get("preprocess_cfg") or {})


def _read_local_dir(path: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(folder, model_cfg, preprocess_cfg) of an open_clip hub-layout folder, with weights checked present."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrained {LOCAL_DIR_PREFIX}{path}: directory {folder} not found")
    config_file = folder / HF_CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"pretrained {LOCAL_DIR_PREFIX}{path}: {config_file} not found")
    model_cfg, preprocess_cfg = _read_open_clip_config(config_file, f"pretrained {LOCAL_DIR_PREFIX}{path}")
    if not any(p.suffix in (".safetensors", ".bin", ".pth") for p in folder.iterdir()):
        raise FileNotFoundError(
            f"pretrained {LOCAL_DIR_PREFIX}{path}: no weights file (*.safetensors, *.bin, *.pth) in {folder}"
        )
    return folder, model_cfg, preprocess_cfg


# ---------------------------------------------------------------------------------------------- hf-hub:
def hub_model_id(value: str) -> str:
    """``"hf-hub:org/name"`` -> ``"org/name"``, or an error naming the value."""
    repo_id = value[len(HF_HUB_PREFIX):].strip().strip("/")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{value!r}: expected {HF_HUB_PREFIX}<org>/<name>, e.g. {HF_HUB_PREFIX}Marqo/marqo-fashionCLIP")
    return repo_id


def _hub_file(repo_id: str, filename: str | None, what: str, cache_dir: str | None) -> str:
    """A file of an open_clip hub repository, found as open_clip finds it (``filename=None``: the weights,
    ``open_clip_model.safetensors`` before ``open_clip_pytorch_model.bin``).

    Offline, only the local hub cache (``cache_dir``, else ``HF_HUB_CACHE``) is looked at, with no network
    call; a miss is an error naming the repository and ``HF_HUB_OFFLINE``.
    """
    names = _hub_candidates(f"{repo_id}/{filename or ''}")[1]
    if hub_is_offline():
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        cache = cache_dir or hf_constants.HF_HUB_CACHE
        raise HubOfflineError(
            f"open_clip model {HF_HUB_PREFIX}{repo_id}: its {what} ({' or '.join(names)}) is not in the local hub "
            f"cache ({cache}) and HF_HUB_OFFLINE is set, so it cannot be downloaded; fetch the repository once with "
            f"network access, or pass '{LOCAL_DIR_PREFIX}/path' to a copy of it"
        )
    try:
        return download_pretrained_from_hf(repo_id, filename=filename, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001  hub / network / auth raise many types: one error naming repo and file
        raise RuntimeError(
            f"could not download the {what} of open_clip model {HF_HUB_PREFIX}{repo_id} ({' or '.join(names)}): {err}"
        ) from err


def _resolve_hub_model(repo_id: str, cache_dir: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) from the repository's ``open_clip_config.json``."""
    config_file = _hub_file(repo_id, HF_CONFIG_NAME, "config", cache_dir)
    return _read_open_clip_config(Path(config_file), f"{HF_HUB_PREFIX}{repo_id}")


# ---------------------------------------------------------------------------------------------- tokenizer
def _make_tokenizer(
    config: str | None, model_cfg: dict[str, Any], local_dir: Path | None, cache_dir: str | None = None
) -> Any:
    """open_clip's tokenizer for this architecture, at its context length.

    For ``hf-hub:`` models (and specs rebuilt without their folder) this is what ``open_clip.get_tokenizer``
    does with the repository's config, read from ``model_cfg`` rather than fetched again.
    """
    text_cfg = model_cfg["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    if local_dir is not None:
        return open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{local_dir}", context_length=context_length)
    builtin = config is not None and not config.startswith(HF_HUB_PREFIX)
    if builtin and open_clip.get_model_config(config) is not None:
        return open_clip.get_tokenizer(config, context_length=context_length)
    if text_cfg.get("hf_tokenizer_name"):
        # The tokenizer named by the architecture itself (a hub model, or a spec rebuilt without its folder).
        return HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            cache_dir=cache_dir,
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
        # open_clip resizes with bilinear for "bilinear" and bicubic otherwise ("random" only varies training).
        self.pixels = PixelConfig.of(
            preprocess.mean, preprocess.std, "bilinear" if preprocess.interpolation == "bilinear" else "bicubic",
            f"open_clip backbone {spec['name']} preprocess_cfg",
        )
        self.init_logit_scale = float(model.logit_scale.detach().reshape(-1)[0])
        model.logit_scale.requires_grad_(False)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.requires_grad_(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=False)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        texts = check_texts(texts)
        tokens = self.tokenizer(texts).long()
        # A text of at most context_length - 2 characters always fits (a BPE token covers at least one); the
        # others are tokenized again without a limit: a truncated one differs from it within the context.
        longer = [i for i, t in enumerate(texts) if len(t) > tokens.shape[1] - 2]
        if longer and not getattr(self, "_truncation_reported", False):
            full = self.tokenizer([texts[i] for i in longer], context_length=max(len(texts[i]) for i in longer) + 2)
            cut = (full[:, : tokens.shape[1]].long() != tokens[longer]).any(dim=1).tolist()
            flags = [False] * len(texts)
            for i, flag in zip(longer, cut, strict=True):
                flags[i] = bool(flag)
            self.report_truncated(texts, flags)
        return tokens

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def _create_model(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], weights: str | None) -> torch.nn.Module:
    """Build an explicit architecture with open_clip's own classes and loader.

    This is ``open_clip.create_model``'s path for a resolved config: the class is chosen as it chooses it,
    tower weights (timm / transformers) are never fetched (``pretrained_image=False, pretrained_text=False``),
    and a weights file goes through ``open_clip.load_checkpoint`` (strict). Unlike ``create_model`` it needs no
    registered name or folder, so open_clip's global config registry stays untouched.
    """
    cfg = copy.deepcopy(model_cfg)
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    hf_text = "hf_model_name" in cfg["text_cfg"]
    if hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if cfg.pop("custom_text", False) or hf_text:
        model_class = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    else:
        model_class = open_clip.CLIP
    model = model_class(**cfg)
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, weights, strict=True)
        except Exception as err:  # noqa: BLE001  torch.load / safetensors / strict loading: one clear error
            raise RuntimeError(f"could not load open_clip weights {weights}: {err}") from err
    open_clip.set_model_preprocess_cfg(model, {**preprocess_cfg, "size": model.visual.image_size})
    return model


def _hub_source(config: str | None, pretrained: str | None, model_cfg: dict[str, Any] | None) -> str | None:
    """The hub repository to fetch from, or None.

    ``pretrained="hf-hub:ID"`` always fetches (config, preprocessing and weights). ``config="hf-hub:ID"``
    fetches only without ``model_cfg``: with it (what a checkpoint's spec holds) the architecture is given
    and the weights come from the checkpoint, so a rebuild never needs the hub.
    """
    config_id = hub_model_id(config) if config is not None and config.startswith(HF_HUB_PREFIX) else None
    if pretrained is not None and pretrained.startswith(HF_HUB_PREFIX):
        pretrained_id = hub_model_id(pretrained)
        if config_id is not None and config_id != pretrained_id:
            raise ValueError(f"config {config!r} and pretrained {pretrained!r} name different hub models; give one")
        return pretrained_id
    if config_id is not None and pretrained is not None and pretrained.startswith(LOCAL_DIR_PREFIX):
        raise ValueError(f"config {config!r} and pretrained {pretrained!r} both bring an architecture; give one")
    return config_id if model_cfg is None else None


def _same_architecture(name: str, source: str, found: dict[str, Any], config: str | None, model_cfg: dict | None) -> None:
    """A folder's or repository's architecture must be the one the caller named, if any."""
    if model_cfg is not None and model_cfg != found:
        raise ValueError(f"backbone {name!r}: model_cfg differs from the one in {source}")
    if model_cfg is None and config is not None and not config.startswith(HF_HUB_PREFIX) and _builtin_cfg(config) != found:
        raise ValueError(
            f"backbone {name!r}: {source} holds another architecture than open_clip config {config!r}; "
            f"leave config out to use its own"
        )


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
    hub_id = _hub_source(config, pretrained, model_cfg)

    if pretrained is not None and pretrained.startswith(LOCAL_DIR_PREFIX):
        local_dir, dir_cfg, overlay = _read_local_dir(pretrained[len(LOCAL_DIR_PREFIX):])
        pretrained = f"{LOCAL_DIR_PREFIX}{local_dir.resolve()}"  # the spec records where, whatever the cwd
        _same_architecture(name, f"{local_dir}/{HF_CONFIG_NAME}", dir_cfg, config, model_cfg)
        model_cfg = dir_cfg
    elif hub_id is not None:
        # As open_clip.create_model("hf-hub:ID"): the repository's architecture, preprocessing and weights.
        hub_cfg, overlay = _resolve_hub_model(hub_id, cache_dir)
        _same_architecture(name, f"{HF_HUB_PREFIX}{hub_id}", hub_cfg, config, model_cfg)
        model_cfg = hub_cfg
        config = f"{HF_HUB_PREFIX}{hub_id}"  # the spec records the id, whichever argument named it
        if pretrained is None or pretrained.startswith(HF_HUB_PREFIX):
            weights = _hub_file(hub_id, None, "weights", cache_dir)
            pretrained = config
        elif Path(pretrained).expanduser().is_file() or _looks_like_path(pretrained):
            weights = pretrained = _weights_file(pretrained)  # the hub's architecture with the user's weights
        else:
            raise ValueError(f"pretrained {pretrained!r}: open_clip tags belong to built-in configs, not to {config!r}")
    else:
        if model_cfg is None:
            if config is None:
                raise ValueError(f"backbone {name!r} needs config= (an open_clip model name) or model_cfg=")
            model_cfg = _builtin_cfg(config)
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
    # Said here because open_clip says nothing on this path (and says "initialized randomly" on others even
    # when a stage checkpoint is about to be loaded over the model).
    log.debug(
        "open_clip backbone %s: %s",
        config or name,
        f"weights from {pretrained}" if pretrained else "architecture only; the weights come from a checkpoint or training",
    )
    final_pp = _jsonable(open_clip.get_model_preprocess_cfg(model))
    if preprocess_cfg is not None and "size" in preprocess_cfg:
        asked, actual = _square_size(_jsonable(preprocess_cfg["size"]), name), _square_size(final_pp["size"], name)
        if asked != actual:
            raise ValueError(
                f"backbone {name!r}: preprocess_cfg size {asked} differs from the model's input size {actual}"
            )
    tokenizer = _make_tokenizer(config, model_cfg, local_dir, cache_dir)

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
        config: an open_clip model name (``open_clip.list_models()``), including ``ctiir-tiny``, or
            ``"hf-hub:org/name"`` (``openclip:hf-hub:Marqo/marqo-fashionCLIP``): that repository's architecture,
            preprocessing, tokenizer and weights, as ``open_clip.create_model`` loads them.
        pretrained: ``None`` (random init, or the repository's weights for an ``hf-hub:`` config), an
            open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``), a weights file
            (.pt/.pth/.bin/.safetensors), ``"hf-hub:org/name"`` (as the config form) or ``"local-dir:/path"``
            (a folder in open_clip's hub layout, whose ``open_clip_config.json`` then gives the architecture).
        model_cfg: an explicit open_clip architecture dict; overrides ``config`` (checkpoints store it, with
            the ``hf-hub:`` id as ``config``, and rebuild from it without the hub).
        preprocess_cfg: overrides of open_clip's ``PreprocessCfg`` (mean, std, interpolation, resize_mode...).
        cache_dir: where tags and hub files are downloaded / looked up (default: the hub cache, ``HF_HUB_CACHE``).
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
