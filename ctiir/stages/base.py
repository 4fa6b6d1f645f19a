"""``CTIIRStage``: what the three progressive stages share.

- The backbone is injected (a registry name with its arguments, a spec dict, or a built ``Backbone``).
- ``save_hyperparameters`` stores the backbone's *spec* and the fusion's *config* (not the objects), so
  ``load_from_checkpoint`` rebuilds the model with no other input and fetches no weights.
- ``init_from`` starts a stage from an earlier stage's checkpoint; any mismatch is an error.
- Contrastive losses are computed against negatives gathered from every rank, with gradients.
- ``encode_query`` / ``encode_gallery`` are the contract with the ``RetrievalEvaluation`` callback.
- The stage tells its datamodule what it needs in one call (``datamodule.serve(self.data_request())``, in
  ``setup``), and records the preprocessing the datamodule used, so that a checkpoint carries it.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.parsing import AttributeDict
from transformers import get_cosine_schedule_with_warmup

from ctiir.backbones import Backbone, build_backbone
from ctiir.checkpoints import (
    RNG_KEY,
    SAFE_GLOBALS,
    CheckpointError,
    check_lightning,
    check_stage_hparams,
    load_checkpoint,
    rng_states,
    set_rng_states,
)
from ctiir.datamodules.request import DataRequest, Source
from ctiir.datamodules.transforms import Preprocessing, build_transforms
from ctiir.fusion import Fused, Fusion, build_fusion
from ctiir.fusion.registry import FUSIONS
from ctiir.losses import ContrastiveLoss, ids_to_tensor

log = logging.getLogger(__name__)

BackboneArg = str | dict[str, Any] | Backbone
# ``Fusion`` first: jsonargparse tries a union's types in order, so a class path (``ctiir.fusion.Gated``, or
# ``{class_path, init_args}`` in YAML) is parsed as a Fusion subclass, its arguments checked, listed by
# ``--print_config`` and overridable one by one (``--model.init_args.fusion.init_args.mode=rank``). A registry
# name, a checkpoint's ``{"name": ...}`` config and a class path that does not resolve fall through to
# ``str`` / ``dict``; ``resolve_fusion`` builds those, or names what is wrong.
FusionArg = Fusion | str | dict[str, Any]


def resolve_backbone(backbone: BackboneArg, backbone_kwargs: dict[str, Any] | None) -> Backbone:
    if isinstance(backbone, Backbone):
        if backbone_kwargs:
            raise ValueError("backbone_kwargs is only for a backbone given by name")
        return backbone
    if isinstance(backbone, str):
        return build_backbone(backbone, **(backbone_kwargs or {}))
    if isinstance(backbone, dict):
        spec = {**backbone, **(backbone_kwargs or {})}
        if "name" not in spec:
            raise ValueError(f"a backbone spec needs a 'name' key, got keys {sorted(spec)}")
        return build_backbone(**spec)
    raise TypeError(f"backbone must be a name, a spec dict or a Backbone, got {type(backbone).__name__}")


def fusion_class(path: str) -> type[Fusion]:
    """The ``Fusion`` subclass at a class path such as ``ctiir.fusion.Gated``; anything else is a clear error."""
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr) if module_name else None
    except ImportError as err:
        raise ValueError(f"fusion class {path!r}: cannot import {module_name!r} ({err})") from None
    except AttributeError:
        raise ValueError(f"fusion class {path!r}: module {module_name!r} has no {attr!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Fusion)):
        known = ", ".join(FUSIONS.names())
        raise ValueError(f"fusion {path!r} is neither a registered fusion name ({known}) nor a Fusion class path")
    return cls


def check_fusion(fusion: FusionArg) -> None:
    """Check that a fusion's name or class path resolves, without building it (a config's pre-flight).

    An unknown name is a ``ValueError`` listing the registered fusions; a bad class path names what failed.
    """
    if isinstance(fusion, Fusion):
        return
    if isinstance(fusion, Mapping):
        fusion = fusion.get("class_path") or fusion.get("name")  # type: ignore[assignment]
        if fusion is None:
            return  # resolve_fusion reports the missing key
    if not isinstance(fusion, str):
        raise TypeError(f"fusion must be a name, a class path, a config dict or a Fusion, got {type(fusion).__name__}")
    if "." in fusion:
        fusion_class(fusion)
    elif fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; known fusions: {', '.join(FUSIONS.names())}")


def resolve_fusion(fusion: FusionArg, fusion_kwargs: dict[str, Any] | None, embed_dim: int) -> Fusion:
    """Every form a fusion may be given in, as one bound ``Fusion``.

    A registry name (``"gated"``), a class path (``"ctiir.fusion.Gated"``), a config dict (a checkpoint's
    ``{"name": ..., **kwargs}``, or LightningCLI's ``{"class_path": ..., "init_args": {...}}``), or a built
    ``Fusion``. ``fusion_kwargs`` adds arguments to the first three.
    """
    extra = dict(fusion_kwargs or {})
    if isinstance(fusion, Fusion):
        if extra:
            raise ValueError("fusion_kwargs is only for a fusion given by name or class path")
        return fusion.bind(embed_dim)
    if isinstance(fusion, str):
        if "." in fusion:
            return fusion_class(fusion)(embed_dim=embed_dim, **extra)
        return build_fusion(fusion, embed_dim=embed_dim, **extra)
    if isinstance(fusion, Mapping):
        config = {**fusion, **extra}
        if "class_path" in config:
            unknown = sorted(set(config) - {"class_path", "init_args"})
            if unknown:
                raise ValueError(f"a class_path fusion takes only class_path and init_args; got also {unknown}")
            init_args = dict(config.get("init_args") or {})
            stored = init_args.pop("embed_dim", None)
            return fusion_class(config["class_path"])(embed_dim=stored, **init_args).bind(embed_dim)
        if "name" not in config:
            # On the command line this is what is left when an argument set with
            # --model.init_args.fusion.init_args.KEY does not validate: jsonargparse then drops the class.
            raise ValueError(
                f"a fusion config needs a 'name' (a registered fusion) or a 'class_path'; got keys {sorted(config)}. "
                "If these are arguments of a fusion class set on the command line, one of them is not valid for it: "
                "`ctiir fit --model.init_args.fusion.help CLASS` lists them"
            )
        stored = config.pop("embed_dim", None)
        # A stored size that differs from the backbone's is an error naming both, not a silent rebuild.
        return build_fusion(config.pop("name"), embed_dim=stored, **config).bind(embed_dim)
    raise TypeError(f"fusion must be a name, a class path, a config dict or a Fusion, got {type(fusion).__name__}")


def architecture(spec: dict[str, Any]) -> dict[str, Any]:
    """The parts of a backbone spec that decide the weights' shapes (not where they came from)."""
    return {k: v for k, v in spec.items() if k not in ("pretrained", "cache_dir", "device", "precision", "preprocess_cfg")}


class CTIIRStage(L.LightningModule):
    """Base LightningModule of the three stages.

    Args:
        backbone: a registry name (``"tiny"``, ``"openclip:ViT-B-32"``, ``"hf-clip"``), a spec dict
            ``{"name": ..., **kwargs}`` or a built ``Backbone``.
        backbone_kwargs: arguments for a backbone given by name (e.g. ``{"pretrained": "openai"}``).
        fusion: how composed queries are formed: a registry name (``"gated"``), a class path
            (``"ctiir.fusion.Gated"``; in YAML ``{class_path, init_args}``), a config dict ``{"name": ...}`` or
            a ``Fusion``. Stages I and II only use it to report the composed zero-shot baseline; its
            parameters are frozen there.
        fusion_kwargs: arguments for a fusion given by name.
        lr_backbone / lr_heads: learning rates of the backbone and of everything else (fusion, logit scale).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings and the logit scale).
        warmup_steps: linear warm-up steps (an int) or fraction of all steps (a float < 1), then cosine decay.
        learn_logit_scale: whether the contrastive temperature is learned.
        init_logit_scale: the temperature's start; default: the backbone's own (CLIP's ln(1/0.07)).
        init_from: a checkpoint of an earlier stage to start from (backbone, temperature, and the fusion when
            it has the same config).
        initialized_from: where the weights came from: what ``init_from`` was, recorded in the checkpoint (and
            the logged hyperparameters) so that a chain of stages can be traced. Nothing is loaded from it;
            leave it ``None``.
        grad_checkpointing: trade compute for memory where the backbone supports it.
        eval_kinds: which evaluation tasks the ``RetrievalEvaluation`` callback runs for this stage; default:
            the stage's own task, then (Stages I and II) the composed protocol, whose fixed-sum scores are the
            zero-shot baseline.
        preprocess: the evaluation preprocessing (``{"mode", "size", "target_pad_ratio"}``). Recorded from
            the datamodule that trains the stage, so checkpoints carry it; leave it ``None``.
    """

    training_sources: ClassVar[Mapping[str, Source]] = {}
    default_eval_kinds: ClassVar[tuple[str, ...]] = ()
    train_fusion: ClassVar[bool] = False

    def __init__(
        self,
        backbone: BackboneArg = "tiny",
        backbone_kwargs: dict[str, Any] | None = None,
        fusion: FusionArg = "fixed",
        fusion_kwargs: dict[str, Any] | None = None,
        lr_backbone: float = 1e-4,
        lr_heads: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: float = 0.1,
        learn_logit_scale: bool = True,
        init_logit_scale: float | None = None,
        init_from: str | None = None,
        grad_checkpointing: bool = False,
        eval_kinds: Sequence[str] | None = None,
        preprocess: dict[str, Any] | None = None,
        initialized_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "fusion"])
        self.backbone = resolve_backbone(backbone, backbone_kwargs)
        self.fusion = resolve_fusion(fusion, fusion_kwargs, self.backbone.embed_dim)
        if not self.train_fusion:
            self.fusion.requires_grad_(False)
        scale = init_logit_scale if init_logit_scale is not None else getattr(self.backbone, "init_logit_scale", math.log(1 / 0.07))
        self.criterion = ContrastiveLoss(scale, learnable=learn_logit_scale)
        self.eval_kinds = tuple(eval_kinds) if eval_kinds is not None else self.default_eval_kinds
        self.preprocessing = Preprocessing.from_dict(preprocess) if preprocess is not None else None
        # Checkpoints store what rebuilds the model, never the objects or a weight source to fetch again.
        self.hparams["backbone"] = self.backbone.checkpoint_spec()
        self.hparams["backbone_kwargs"] = None
        self.hparams["fusion"] = dict(self.fusion.config)
        self.hparams["fusion_kwargs"] = None
        if grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        if init_from:
            self.load_stage_weights(init_from)
            self.hparams["initialized_from"] = str(init_from)
            self.hparams["init_from"] = None

    @property
    def hparams_initial(self) -> AttributeDict:
        """What Lightning's loggers record: the hyperparameters as the checkpoint stores them.

        Lightning logs ``hparams_initial`` at the start of ``fit`` (after ``setup``). Its own snapshot is taken
        inside ``save_hyperparameters``, before this stage resolves its backbone and fusion, so runs would be
        logged without them (and under LightningCLI with the fusion as given, not as built). This is the
        stage's ``hparams`` instead: the backbone spec, the fusion config (sizes resolved), the preprocessing
        the datamodule served and the checkpoint it started from, so TensorBoard, W&B or a CSV ``hparams.yaml``
        tell runs apart.
        """
        return AttributeDict(copy.deepcopy(dict(self.hparams)))

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path | Any,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Lightning's ``load_from_checkpoint``, reading with ``weights_only=True`` (``ctiir.checkpoints``).

        A file that is missing, corrupt, tampered with, not a Lightning checkpoint, or without the
        ``hyper_parameters`` that rebuild the model (backbone, fusion) is a ``CheckpointError`` naming it.
        """
        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            # Maps the tensors: a cheap check before Lightning reads the file (with the same weights_only).
            ckpt = load_checkpoint(checkpoint_path, mmap=True, weights_only=weights_only is not False)
            check_lightning(ckpt, checkpoint_path)
            if hparams_file is None:
                check_stage_hparams(ckpt, checkpoint_path, kwargs)
            del ckpt
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return super().load_from_checkpoint(
                checkpoint_path,
                map_location=map_location,
                hparams_file=hparams_file,
                strict=strict,
                weights_only=True if weights_only is None else weights_only,
                **kwargs,
            )

    # ------------------------------------------------------------------ exact resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the process-wide RNG states (dropout draws from them), so that a resumed run continues them.

        The data side (order, crops, caption order) is derived from the seed and the epoch and its position
        saved by the loader (``ctiir.datamodules.sampling``); together they make a resumed run exact.
        """
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only when resuming training: loading weights for inference must not reseed the caller's RNGs.
        if self._trainer is not None and self.trainer.state.fn == "fit" and RNG_KEY in checkpoint:
            set_rng_states(checkpoint[RNG_KEY])

    # ------------------------------------------------------------------ data and preprocessing
    def data_request(self, inference: bool = False) -> DataRequest:
        """What this stage needs from a datamodule: its training sources, its backbone's transforms and the
        preprocessing its weights were trained with (used as is when ``inference``)."""
        return DataRequest(self.training_sources, self.backbone, trained_with=self.preprocessing, inference=inference)

    def setup(self, stage: str) -> None:
        """Ask the attached ctiir datamodule for data, once, and record the preprocessing it uses."""
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        serve = getattr(datamodule, "serve", None)
        if serve is None:
            return  # plain dataloaders, or a datamodule of the user's own: nothing to ask
        self.record_preprocessing(serve(self.data_request(inference=stage != "fit")))

    def record_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Keep ``preprocessing`` as this model's evaluation preprocessing (saved with the checkpoint)."""
        self.preprocessing = preprocessing
        self.hparams["preprocess"] = preprocessing.to_dict()

    @property
    def eval_transform(self) -> Callable[[Any], torch.Tensor]:
        """The evaluation transform of the recorded preprocessing (the backbone's own when none is recorded).

        Every inference path without a datamodule (CIRR submission, index, search) uses it, so a model
        trained with TargetPad is evaluated with TargetPad.
        """
        preprocessing = self.preprocessing or Preprocessing("backbone", self.backbone.image_size)
        return build_transforms(self.backbone, preprocessing)[1]

    # ------------------------------------------------------------------ weights from an earlier stage
    def load_stage_weights(self, path: str | Path) -> None:
        """Start from an earlier stage's checkpoint. Another backbone or embedding size is an error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from: checkpoint {path} not found")
        try:
            ckpt = load_checkpoint(path)  # weights_only=True: a crafted pickle is refused, never run
            check_lightning(ckpt, path, keys=("state_dict",))
        except CheckpointError as err:
            raise CheckpointError(f"init_from: {err}") from err.__cause__
        theirs = (ckpt.get("hyper_parameters") or {}).get("backbone")
        ours = self.hparams["backbone"]
        if isinstance(theirs, dict) and architecture(theirs) != architecture(ours):
            raise ValueError(
                f"init_from: {path} was trained with backbone {architecture(theirs)}, "
                f"but this stage uses {architecture(ours)}"
            )
        state = ckpt["state_dict"]
        recorded = (ckpt.get("hyper_parameters") or {}).get("preprocess")
        if recorded is not None and self.preprocessing is None:
            self.preprocessing = Preprocessing.from_dict(recorded, f"init_from: {path} hyper_parameters.preprocess")
        backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone_state:
            raise ValueError(f"init_from: {path} holds no backbone weights")
        own = self.backbone.state_dict()
        missing = sorted(set(own) - set(backbone_state))
        unexpected = sorted(set(backbone_state) - set(own))
        mismatched = [k for k in own if k in backbone_state and own[k].shape != backbone_state[k].shape]
        if missing or unexpected or mismatched:
            detail = "; ".join(
                f"{name}: {keys[:5]}{' ...' if len(keys) > 5 else ''}"
                for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys
            )
            raise ValueError(f"init_from: {path} does not fit this backbone ({detail})")
        self.backbone.load_state_dict(backbone_state, strict=True)
        loaded = ["backbone"]
        if "criterion.logit_scale" in state:
            self.criterion.logit_scale.data.copy_(state["criterion.logit_scale"])
            loaded.append("logit scale")
        theirs_fusion = (ckpt.get("hyper_parameters") or {}).get("fusion")
        fusion_state = {k[len("fusion."):]: v for k, v in state.items() if k.startswith("fusion.")}
        if theirs_fusion == self.hparams["fusion"] and fusion_state:
            self.fusion.load_state_dict(fusion_state, strict=True)
            loaded.append("fusion")
        log.info("init_from %s: loaded %s", path, ", ".join(loaded))

    # ------------------------------------------------------------------ encoders (callback contract)
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images.to(self.device)).float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.backbone.tokenize(list(texts)).to(self.device)
        return F.normalize(self.backbone.encode_text(tokens).float(), dim=-1)

    def compose(self, images: torch.Tensor, texts: Sequence[str] | Sequence[Sequence[str]]) -> Fused:
        """Fused queries. A query with several texts (a list) averages its fused embeddings and weights."""
        v = self.encode_images(images)
        if texts and not isinstance(texts[0], str):
            counts = {len(t) for t in texts}
            if len(counts) != 1:
                raise ValueError(f"queries with several texts must all have the same number, got {sorted(counts)}")
            variants = [self.fusion.fuse(v, self.encode_texts([t[j] for t in texts])) for j in range(counts.pop())]
            query = F.normalize(torch.stack([f.query for f in variants]).mean(0), dim=-1)
            weights = [f.weights for f in variants]
            mean = torch.stack(weights).mean(0) if all(w is not None for w in weights) else None  # type: ignore[misc]
            return Fused(query, mean)
        return self.fusion.fuse(v, self.encode_texts(texts))

    def encode_query(self, batch: dict[str, Any]) -> Fused:
        """Query embeddings (``Fused.query``, L2-normalised) with the fusion's modality weights, if any.

        ``"image"`` and ``"text"``: a composed query through the fusion; one of them alone: an image-only or
        text-only query (``weights`` is then ``None``).
        """
        if "image" in batch and "text" in batch:
            return self.compose(batch["image"], batch["text"])
        if "text" in batch:
            return Fused(self.encode_texts(batch["text"]), None)
        if "image" in batch:
            return Fused(self.encode_images(batch["image"]), None)
        raise KeyError(f"a query batch needs 'image' and/or 'text', got keys {sorted(batch)}")

    def encode_gallery(self, batch: dict[str, Any]) -> torch.Tensor:
        if "image" in batch:
            return self.encode_images(batch["image"])
        if "text" in batch:
            return self.encode_texts(batch["text"])
        raise KeyError(f"a gallery batch needs 'image' or 'text', got keys {sorted(batch)}")

    # ------------------------------------------------------------------ contrastive loss across ranks
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows, with gradients flowing back to each rank's own rows (open_clip's gather)."""
        if self._trainer is None or self._trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def rank_offset(self, local_batch: int) -> int:
        return 0 if self._trainer is None or self._trainer.world_size == 1 else self.global_rank * local_batch

    def contrastive(
        self, queries: torch.Tensor, keys: torch.Tensor, key_ids: Sequence[Any], symmetric: bool = False
    ) -> torch.Tensor:
        """InfoNCE of local queries against the global batch of keys, masking duplicate key ids."""
        ids = self.gather(ids_to_tensor(key_ids, device=keys.device))
        all_keys = self.gather(keys)
        self._keys_per_query = all_keys.shape[0]  # logged: shows that negatives come from every rank
        all_queries = self.gather(queries) if symmetric else None
        return self.criterion(
            queries, all_keys, ids, offset=self.rank_offset(queries.shape[0]), symmetric=symmetric,
            queries_all=all_queries, query_ids_all=ids if symmetric else None,
        )

    def stage_loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{"loss": total, **parts}`` for one batch; implemented by each stage."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        parts = self.stage_loss(batch)
        bs = self._batch_size(batch)
        for name, value in parts.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=bs)
        self.log("train/logit_scale", self.criterion.scale(), batch_size=bs)
        self.log("train/keys_per_query", float(getattr(self, "_keys_per_query", 0)), batch_size=bs)
        return parts["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        parts = self.stage_loss(batch)
        bs = self._batch_size(batch)
        for name, value in parts.items():
            self.log(f"val/{name}", value, batch_size=bs, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Embeddings with their ids: gallery batches (``gallery_id``) or query batches (``query_id``)."""
        if "query_id" in batch:
            return {"query_id": batch["query_id"], "target_id": batch["target_id"], "embedding": self.encode_query(batch).query}
        return {"gallery_id": batch["gallery_id"], "embedding": self.encode_gallery(batch)}

    @staticmethod
    def _batch_size(batch: Any) -> int:
        if isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    return int(value.shape[0])
                if isinstance(value, dict):
                    return CTIIRStage._batch_size(value)
                if isinstance(value, list):
                    return len(value)
        return 1

    def configure_callbacks(self) -> list[L.Callback]:
        """Attach a ``RetrievalEvaluation`` unless the trainer has one, so a plain ``Trainer`` reports recall."""
        from ctiir.callbacks import RetrievalEvaluation

        if any(isinstance(c, RetrievalEvaluation) for c in self.trainer.callbacks):
            return []
        return [RetrievalEvaluation()]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        decay, no_decay, head_decay, head_no_decay = [], [], [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            flat = param.ndim < 2 or "bias" in name or "norm" in name or "ln_" in name or "embedding" in name or "logit_scale" in name
            is_backbone = name.startswith("backbone.")
            target = (no_decay if flat else decay) if is_backbone else (head_no_decay if flat else head_decay)
            target.append(param)
        hp = self.hparams
        groups = [
            {"params": decay, "lr": hp.lr_backbone, "weight_decay": hp.weight_decay, "name": "backbone"},
            {"params": no_decay, "lr": hp.lr_backbone, "weight_decay": 0.0, "name": "backbone_no_decay"},
            {"params": head_decay, "lr": hp.lr_heads, "weight_decay": hp.weight_decay, "name": "heads"},
            {"params": head_no_decay, "lr": hp.lr_heads, "weight_decay": 0.0, "name": "heads_no_decay"},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(hp.warmup_steps * total) if hp.warmup_steps < 1 else int(hp.warmup_steps)
        scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(warmup, total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
