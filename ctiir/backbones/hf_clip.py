"""transformers ``CLIPModel`` backbone (``hf-clip``): from a local folder, a hub id or a ``CLIPConfig`` dict.

It must work with no hub at all: the tokenizer comes from the folder when it has one, else it is built from
the CLIP BPE vocabulary that open_clip ships (the same 49408 tokens); transforms come from the folder's
image-processor config, else CLIP's mean/std at the model's input size. The spec stores the full config
dict and the preprocessing, so a checkpoint rebuilds without the original folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from huggingface_hub import file_exists, try_to_load_from_cache
from PIL import Image
from torchvision import transforms as T
from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from ctiir.backbones.base import Backbone, PixelConfig
from ctiir.backbones.openclip import CLIP_VOCAB_SIZE, HubOfflineError, check_texts, hub_is_offline
from ctiir.backbones.registry import register_backbone

log = logging.getLogger(__name__)

CLIP_MEAN = list(open_clip.OPENAI_DATASET_MEAN)
CLIP_STD = list(open_clip.OPENAI_DATASET_STD)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
PROCESSOR_FILE = "preprocessor_config.json"
PREPROCESS_KEYS = ("size", "crop_size", "mean", "std", "interpolation")
# PIL's resampling codes (what image-processor configs store) -> torchvision names.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_OPEN_CLIP_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}

# A few-hundred-thousand-parameter CLIPConfig for tests (the vocabulary stays CLIP's).
TINY_HF_CONFIG: dict[str, Any] = {
    "projection_dim": 32,
    "text_config": {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
}


# ---------------------------------------------------------------------------------------------- tokenizer
def check_tokenizer(tokenizer: Any, source: str) -> Any:
    """CLIP's vocabulary or an error: an offline ``from_pretrained`` can quietly return a 2-token tokenizer."""
    size = len(tokenizer)
    if size != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"hf-clip tokenizer from {source} has {size} tokens, expected CLIP's {CLIP_VOCAB_SIZE} "
            f"(its vocab files are missing or not CLIP's)"
        )
    return tokenizer


def clip_bpe_tokenizer() -> Any:
    """A real CLIP BPE tokenizer built from open_clip's bundled vocabulary, with no hub access.

    open_clip's ``SimpleTokenizer`` holds the same vocabulary and merges as openai's; only the two special
    tokens are spelt differently. Written as ``vocab.json`` + ``merges.txt``, transformers loads them with
    its own CLIP pre-tokenisation rules.
    """
    simple = open_clip.SimpleTokenizer()
    vocab = {_OPEN_CLIP_SPECIALS.get(token, token): index for token, index in simple.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    with tempfile.TemporaryDirectory(prefix="ctiir-clip-bpe-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    return check_tokenizer(tokenizer, "open_clip's bundled BPE vocabulary")


# ---------------------------------------------------------------------------------------------- sources
def _hub_has(repo_id: str, filename: str, cache_dir: str | None) -> bool:
    return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)


class _Source:
    """Where a model comes from: a local folder, or a hub id (possibly only as cached files)."""

    def __init__(self, value: str, cache_dir: str | None) -> None:
        self.value = value
        self.cache_dir = cache_dir
        path = Path(value).expanduser()
        self.local: Path | None = path.resolve() if path.is_dir() else None
        if self.local is None:
            if path.exists():
                raise ValueError(f"hf-clip model {value}: is a file; give a save_pretrained folder or a hub id")
            if value.startswith(("/", ".", "~")) or value.count("/") > 1:
                raise FileNotFoundError(f"hf-clip model directory {value} not found")
            if hub_is_offline() and not _hub_has(value, "config.json", cache_dir):
                raise HubOfflineError(
                    f"hf-clip model {value!r}: no such local directory, and as a Hugging Face Hub id it is not in "
                    f"the local cache while HF_HUB_OFFLINE is set; download it once with network access or pass "
                    f"a local directory"
                )

    def has(self, filename: str) -> bool:
        if self.local is not None:
            return (self.local / filename).is_file()
        if hub_is_offline():
            return _hub_has(self.value, filename, self.cache_dir)
        try:
            return file_exists(self.value, filename)
        except Exception as err:  # noqa: BLE001  network / auth errors: name the repo and file
            raise RuntimeError(f"hf-clip: could not ask the hub whether {self.value} has {filename}: {err}") from err

    @property
    def ref(self) -> str:
        return str(self.local) if self.local is not None else self.value


def _load(what: str, source: _Source, loader: Callable[[], Any]) -> Any:
    try:
        return loader()
    except Exception as err:  # noqa: BLE001  transformers / hub raise many types; name the source in one error
        raise RuntimeError(f"hf-clip: could not load the {what} from {source.ref}: {err}") from err


# ---------------------------------------------------------------------------------------------- transforms
def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _size_fields(value: Any, int_means: str) -> dict[str, int]:
    """Image-processor sizes are dicts in transformers 4 and ``SizeDict`` objects in 5: read either."""
    if isinstance(value, int):
        return {int_means: value} if int_means == "shortest_edge" else {"height": value, "width": value}
    fields = {}
    for key in ("shortest_edge", "height", "width"):
        item = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if item is not None:
            fields[key] = int(item)
    return fields


def _processor_preprocess(processor: Any, where: str) -> dict[str, Any]:
    """The values ctiir needs from a ``CLIPImageProcessor``, as a JSON-able dict."""
    size: int | list[int] | None = None
    if processor.do_resize:
        fields = _size_fields(processor.size, "shortest_edge")
        if "shortest_edge" in fields:
            size = fields["shortest_edge"]
        elif "height" in fields and "width" in fields:
            size = [fields["height"], fields["width"]]
        else:
            raise ValueError(f"{where}: unsupported size {processor.size!r}")
    crop: int | None = None
    if processor.do_center_crop:
        fields = _size_fields(processor.crop_size, "square")
        if fields.get("height") is None or fields.get("height") != fields.get("width"):
            raise ValueError(f"{where}: ctiir needs a square crop_size, got {processor.crop_size!r}")
        crop = fields["height"]
    resample = processor.resample
    interpolation = _PIL_RESAMPLE.get(int(resample)) if resample is not None else "bicubic"
    if interpolation is None:
        raise ValueError(f"{where}: unknown resample {resample!r}")
    return {
        "size": size,
        "crop_size": crop,
        "mean": [float(v) for v in processor.image_mean],
        "std": [float(v) for v in processor.image_std],
        "interpolation": interpolation,
    }


def _output_size(pp: dict[str, Any]) -> int:
    if pp["crop_size"] is not None:
        return int(pp["crop_size"])
    size = pp["size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    raise ValueError(f"hf-clip preprocessing {pp} does not give square images (no crop_size)")


def _check_preprocess(pp: Any, image_size: int) -> dict[str, Any]:
    if not isinstance(pp, dict):
        raise TypeError(f"hf-clip preprocess_cfg must be a dict, got {type(pp).__name__}")
    unknown = sorted(set(pp) - set(PREPROCESS_KEYS))
    if unknown:
        raise ValueError(f"hf-clip preprocess_cfg: unknown keys {unknown}; known: {list(PREPROCESS_KEYS)}")
    pp = {**default_preprocess(image_size), **pp}
    try:
        T.InterpolationMode(pp["interpolation"])
    except ValueError:
        raise ValueError(f"hf-clip preprocess_cfg: unknown interpolation {pp['interpolation']!r}") from None
    if _output_size(pp) != image_size:
        raise ValueError(
            f"hf-clip preprocessing gives {_output_size(pp)} px images but the vision model expects {image_size} px"
        )
    return pp


def default_preprocess(image_size: int) -> dict[str, Any]:
    """CLIP's own preprocessing at ``image_size``: shortest side, centre crop, openai mean/std, bicubic."""
    return {"size": image_size, "crop_size": image_size, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic"}


def build_transforms(pp: dict[str, Any]) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """(train, eval) torchvision pipelines; training uses open_clip's default mild RandomResizedCrop."""
    mode = T.InterpolationMode(pp["interpolation"])
    out = _output_size(pp)
    tail = [T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(pp["mean"], pp["std"])]
    steps: list[Any] = []
    if pp["size"] is not None:
        steps.append(T.Resize(pp["size"], interpolation=mode))
    if pp["crop_size"] is not None:
        steps.append(T.CenterCrop(pp["crop_size"]))
    train = T.Compose([T.RandomResizedCrop(out, scale=(0.9, 1.0), interpolation=mode), *tail])
    return train, T.Compose([*steps, *tail])


# ---------------------------------------------------------------------------------------------- backbone
def _config_dict(config: CLIPConfig) -> dict[str, Any]:
    """The full config without bookkeeping (paths, versions) so equal architectures give equal specs."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: clean(v)
                for k, v in value.items()
                if not (isinstance(k, str) and (k.startswith("_") or k == "transformers_version"))
            }
        return value

    return json.loads(json.dumps(clean(config.to_dict()), default=str))


class HFCLIPBackbone(Backbone):
    """A transformers ``CLIPModel``; its ``logit_scale`` is frozen (stages own the temperature)."""

    def __init__(self, model: CLIPModel, tokenizer: Any, preprocess_cfg: dict[str, Any], spec: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.embed_dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.vocab_size = len(tokenizer)
        image_size = model.config.vision_config.image_size
        if not isinstance(image_size, int):
            if len(image_size) != 2 or image_size[0] != image_size[1]:
                raise ValueError(f"hf-clip: ctiir needs a square image size, got {image_size!r}")
            image_size = int(image_size[0])
        self.image_size = image_size
        self.train_transform, self.eval_transform = build_transforms(preprocess_cfg)
        self.pixels = PixelConfig.of(
            preprocess_cfg["mean"], preprocess_cfg["std"], preprocess_cfg["interpolation"], "hf-clip preprocess_cfg"
        )
        self.init_logit_scale = float(model.logit_scale.detach())
        model.logit_scale.requires_grad_(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # The towers directly, not get_image_features: its return type changed between transformers 4 and 5.
        pooled = self.model.vision_model(pixel_values=images).pooler_output
        return self.model.visual_projection(pooled)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=tokens).pooler_output
        return self.model.text_projection(pooled)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        texts = check_texts(texts)
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        longer = [i for i, t in enumerate(texts) if len(t) > self.context_length - 2]  # shorter ones always fit
        if longer and not getattr(self, "_truncation_reported", False):
            ids = self.tokenizer([texts[i] for i in longer], truncation=False, verbose=False)["input_ids"]
            flags = [False] * len(texts)
            for i, row in zip(longer, ids, strict=True):
                flags[i] = len(row) > self.context_length
            self.report_truncated(texts, flags)
        return batch["input_ids"].long()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers 5 renamed the methods (the old names warn); 4.x only has the old ones.
        if hasattr(self.model, "activation_checkpointing_enable"):
            if enable:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()


@register_backbone("hf-clip", test_kwargs={"config": TINY_HF_CONFIG})
def hf_clip_backbone(
    model: str | None = None,
    config: dict[str, Any] | None = None,
    pretrained: str | None = None,
    preprocess_cfg: dict[str, Any] | None = None,
    cache_dir: str | None = None,
) -> HFCLIPBackbone:
    """transformers CLIP: ``build_backbone("hf-clip", model="openai/clip-vit-base-patch32")``.

    Args:
        model: a ``save_pretrained`` folder or a hub id: architecture, weights, tokenizer and preprocessing.
        config: ``CLIPConfig`` kwargs; alone it gives a random init, with ``model`` it overrides its config.
        pretrained: the same as ``model`` (the uniform weight-source name, which checkpoints set to ``None``).
        preprocess_cfg: ``{"size", "crop_size", "mean", "std", "interpolation"}`` overrides.
        cache_dir: the hub cache to look in.
    """
    if model is not None and pretrained is not None and os.fspath(model) != os.fspath(pretrained):
        raise ValueError(f"hf-clip: model={model!r} and pretrained={pretrained!r} disagree; give one")
    weights = model if model is not None else pretrained
    if weights is None and config is None:
        raise ValueError("hf-clip needs model= (a local directory or hub id) or config= (CLIPConfig kwargs)")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"hf-clip config must be a dict of CLIPConfig kwargs, got {type(config).__name__}")
    try:
        clip_config = CLIPConfig.from_dict(dict(config)) if config is not None else None
    except Exception as err:  # noqa: BLE001  TypeError, ValueError or huggingface_hub's strict-dataclass errors
        raise ValueError(f"hf-clip: invalid CLIPConfig {config}: {err}") from err

    source = _Source(os.fspath(weights), cache_dir) if weights is not None else None
    if source is None:
        assert clip_config is not None
        clip_model = CLIPModel(clip_config)
        tokenizer = clip_bpe_tokenizer()
        found_pp = None
    else:
        clip_model = _load(
            "model",
            source,
            lambda: CLIPModel.from_pretrained(source.ref, config=clip_config, cache_dir=cache_dir),
        )
        if any(source.has(name) for name in TOKENIZER_FILES):
            tokenizer = _load("tokenizer", source, lambda: AutoTokenizer.from_pretrained(source.ref, cache_dir=cache_dir))
            check_tokenizer(tokenizer, source.ref)
        else:
            log.info("hf-clip: %s has no tokenizer files; using CLIP's BPE vocabulary from open_clip", source.ref)
            tokenizer = clip_bpe_tokenizer()
        found_pp = None
        if source.has(PROCESSOR_FILE):
            processor = _load(
                "image processor", source, lambda: CLIPImageProcessor.from_pretrained(source.ref, cache_dir=cache_dir)
            )
            found_pp = _processor_preprocess(processor, f"{source.ref}/{PROCESSOR_FILE}")
    clip_model = clip_model.float()  # transformers 5 keeps a checkpoint's dtype; training wants fp32 master weights

    image_size = clip_model.config.vision_config.image_size
    image_size = image_size if isinstance(image_size, int) else int(image_size[0])
    pp = _check_preprocess({**(found_pp or {}), **(preprocess_cfg or {})}, image_size)
    spec = {
        "name": "hf-clip",
        "config": _config_dict(clip_model.config),
        "pretrained": source.ref if source is not None else None,
        "preprocess_cfg": pp,
        "cache_dir": cache_dir,
    }
    return HFCLIPBackbone(clip_model, tokenizer, pp, spec)
