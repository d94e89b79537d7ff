"""Load any open_clip model — by name + pretrained tag, a local weights file, or a shipped config.

    clip = load_clip("ViT-B-16-quickgelu", "openai", device="cuda")      # the paper's backbone
    clip = load_clip("promptbias-demo", "runs/demo_clip/open_clip_model.safetensors")
    clip = load_clip("promptbias-tiny", None)                            # random init, for tests
    clip.model, clip.tokenizer, clip.image_size, clip.mean, clip.std

Configs in ``promptbias/model/configs/*.json`` are registered with ``open_clip.add_model_config`` on
import. All weights are frozen (``requires_grad_(False)``, ``logit_scale`` included) and the model is
put in eval mode; the methods add their own learnable tensors on top.

Only open_clip CLIPs whose towers the block-by-block encoders reproduce are accepted: a ViT image tower
and open_clip's own text transformer with CLIP's tokenizer, default blocks (no q/k-norm or other custom
block). Anything else (CoCa, timm/ResNet image towers, HF text towers or tokenizers — CLIPA, "worldwide",
SigLIP, …) is refused in one line by :func:`check_config` from the model config, before anything is built
or downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from promptbias.errors import UserError

CONFIG_DIR = resources.files("promptbias.model").joinpath("configs")
SHIPPED_CONFIGS = sorted(
    p.name.removesuffix(".json") for p in CONFIG_DIR.iterdir() if p.name.endswith(".json")
)


@functools.cache
def register_shipped_configs() -> None:
    import open_clip

    open_clip.add_model_config(Path(str(CONFIG_DIR)))


@dataclass
class LoadedClip:
    """A frozen open_clip model plus what the pipeline needs to feed it."""

    model: torch.nn.Module
    tokenizer: Any
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → cuda when available else cpu; 'cuda' without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} requested but no CUDA GPU is visible — use --set device=cpu or auto"
        )
    return torch.device(device)


def load_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> LoadedClip:
    """Create the model, load weights, freeze it. Raises UserError for unknown names/tags/bad files."""
    import open_clip

    register_shipped_configs()
    device = resolve_device(device) if isinstance(device, str) else device
    if name not in open_clip.list_models():
        raise UserError(
            f"model.name: unknown open_clip model {name!r} — pick one of open_clip.list_models() "
            f"or a shipped config ({', '.join(SHIPPED_CONFIGS)})"
        )
    check_config(name)  # from the config alone: nothing is built or downloaded for an unsupported model
    pretrained = pretrained or None
    if pretrained is not None and not _is_weights_file(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            if os.sep in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")):
                raise UserError(f"model.pretrained: weights file {pretrained!r} not found — check the path")
            raise UserError(
                f"model.pretrained: {pretrained!r} is not a pretrained tag of {name} "
                f"(known: {', '.join(tags) or 'none'}) nor a weights file — fix the tag or give a path"
            )
    try:
        with _quiet_random_init(pretrained), _quiet_pickle_protocol():
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except Exception as exc:  # open_clip signals a mismatched file with RuntimeError/AssertionError/KeyError
        if pretrained is None or not _is_weights_file(pretrained):
            raise
        if isinstance(exc, pickle.UnpicklingError):  # torch.load(weights_only=True) refused the pickle
            raise UserError(
                f"model.pretrained: {pretrained} is not a weights file torch can load safely (weights_only: "
                "it pickles objects other than tensors, so it was not loaded) — give a .safetensors file, "
                "or a state dict saved with torch.save(model.state_dict(), path), or an open_clip tag"
            ) from None
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(
            f"model.pretrained: {pretrained} does not match the architecture of {name} ({first_line}) "
            "— use the weights made for this model"
        ) from None
    _check_supported(model, name)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", model.visual.image_size)
    size = int(size[0] if isinstance(size, tuple | list) else size)
    return LoadedClip(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
        image_size=size,
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=pp.get("interpolation", "bicubic"),
    )


@contextlib.contextmanager
def _quiet_random_init(pretrained: str | None) -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded" warning when random init is what was asked."""
    if pretrained is not None:
        yield
        return

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextlib.contextmanager
def _quiet_pickle_protocol() -> Iterator[None]:
    """Silence torch's "Detected pickle protocol …" warning: a file it refuses gets one error line instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def _is_weights_file(pretrained: str) -> bool:
    return Path(pretrained).is_file()


# Block options of open_clip's Transformer that swap in CustomResidualAttentionBlock (q/k-norm, scaled-cosine
# attention, extra norms): the sdpa/explicit paths and the fast text path re-implement the default block only.
CUSTOM_BLOCK_KEYS = (
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)


def unsupported_reason(cfg: dict[str, Any]) -> str | None:
    """What in an open_clip model config promptbias cannot run block by block (None: nothing).

    Decided from the config dict only — nothing is built, no weights or tokenizer files are fetched.
    """
    vision = cfg.get("vision_cfg", {})
    text = cfg.get("text_cfg", {})
    if "multimodal_cfg" in cfg:
        return "a CoCa captioning decoder (multimodal_cfg)"
    if vision.get("timm_model_name"):
        return f"a timm image tower ({vision['timm_model_name']})"
    if isinstance(vision.get("layers"), list | tuple):
        return "a ModifiedResNet image tower"
    if vision.get("attentional_pool"):
        return "an attentional-pooling image tower (vision_cfg.attentional_pool)"
    if text.get("hf_model_name"):
        return f"a Hugging Face text tower ({text['hf_model_name']})"
    if text.get("hf_tokenizer_name"):
        # prompts go right after a start token and EOS is found as CLIP's tokenizer places it; an HF tokenizer
        # also needs `transformers` and a download
        return f"a Hugging Face tokenizer ({text['hf_tokenizer_name']})"
    if text.get("embed_cls"):
        return "a text CLS embedding (text_cfg.embed_cls, CoCa-style)"
    if text.get("use_pad_mask") and text.get("no_causal_mask"):
        return "a padding attention mask in the text tower (text_cfg.use_pad_mask)"
    if text.get("pool_type", "argmax") not in ("argmax", "eos", "first", "last"):
        return f"text pool type {text['pool_type']!r}"
    for tower, sub in (("vision_cfg", vision), ("text_cfg", text)):
        flags = [k for k in CUSTOM_BLOCK_KEYS if sub.get(k)]
        if flags or sub.get("block_type") == "custom":
            what = ", ".join(flags) or "block_type=custom"
            return f"custom transformer blocks ({tower}: {what})"
    return None


def check_config(name: str) -> None:
    """Refuse a model in one line from its open_clip config, before anything is built or downloaded."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    reason = unsupported_reason(cfg or {})
    if reason is not None:
        raise UserError(
            f"model.name: {name} has {reason}, which promptbias does not support — pick a CLIP ViT model "
            "with open_clip's own text tower (e.g. ViT-B-16-quickgelu, ViT-L-14)"
        )


def _check_supported(model: torch.nn.Module, name: str) -> None:
    """Both towers must be open_clip transformers whose blocks we can run one by one."""
    from open_clip.transformer import TextTransformer, VisionTransformer

    if not isinstance(getattr(model, "visual", None), VisionTransformer):
        raise UserError(
            f"model.name: {name} has a {type(getattr(model, 'visual', None)).__name__} image tower; promptbias "
            "needs an open_clip VisionTransformer (ViT-*) — pick a ViT model"
        )
    text = getattr(model, "text", None)
    if text is not None and not isinstance(text, TextTransformer):
        raise UserError(
            f"model.name: {name} has a {type(text).__name__} text tower; promptbias needs an open_clip "
            "TextTransformer (e.g. not an HF text tower) — pick another model"
        )
    from promptbias.model.encoders import check_model

    try:
        check_model(model)  # every block must be one the encoders can run one by one
    except TypeError as exc:
        raise UserError(f"model.name: {name}: {exc} — pick another model") from None
