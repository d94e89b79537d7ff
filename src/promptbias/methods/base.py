"""The base of every method: learnable tensors only, plus how they enter the encoders.

    method = build_method("prompt", clip, classnames, "a photo of a {}.", n_ctx_text=1, ...)
    txt = method.text_features(clip.model)          # C×E, L2-normalised, context truncated
    img = method.image_features(clip.model, x)      # B×E, L2-normalised
    logits = method.logits(clip.model, x)           # B×C = exp(logit_scale) · cos (+ logit_bias if any)
    method.save("params.safetensors"); Method.load("params.safetensors", clip, classnames, template)

A method's ``state_dict`` holds only its learnable tensors (the frozen CLIP is passed in, never
stored). Files are safetensors with a JSON header (``promptbias`` metadata key) naming the method kind,
its hyper-parameters, the backbone and the shape of every tensor. ``load`` accepts a file only when it
holds exactly the tensor names, shapes and dtypes the rebuilt method declares, its header's shapes are
those of its tensors and every value is finite (:func:`check_tensors`): a converted (int32, fp16),
extended, truncated or edited file fails with one line naming the file, the tensor and the fix (retrain);
nothing is ever cast.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from promptbias.data.registry import clean_classname  # noqa: F401  (re-exported for the methods)
from promptbias.errors import UserError
from promptbias.model.encoders import Attention, Layered, Recorder, TextParts, encode_image, encode_text
from promptbias.model.loading import LoadedClip

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method buildable by its ``kind`` name."""
    METHODS[cls.kind] = cls
    return cls


def build_method(kind: str, clip: LoadedClip, classnames: list[str], template: str, **hparams: Any) -> Method:
    from promptbias import catalog

    info = catalog.methods().get(kind)
    if info is not None and kind not in METHODS:
        importlib.import_module(info.module)  # a plugin's class registers itself on import
    if kind not in METHODS:
        raise UserError(f"unknown method {kind!r} — choose one of {', '.join(sorted(METHODS))}")
    return METHODS[kind](clip, classnames, template, **hparams)


class Method(nn.Module):
    """Base class: subclasses set ``kind``, define ``captions`` and create their learnable tensors."""

    kind: ClassVar[str] = ""
    n_ctx_text: int = 0

    def __init__(self, clip: LoadedClip, classnames: list[str], template: str, **hparams: Any) -> None:
        super().__init__()
        self.hparams = dict(hparams)
        self.backbone = clip.name
        self.template = template
        self.classnames = list(classnames)
        self.vision_layers = len(clip.model.visual.transformer.resblocks)
        self.text_layers = len(TextParts.of(clip.model).transformer.resblocks)
        self.vision_width = clip.model.visual.transformer.width
        self.text_width = TextParts.of(clip.model).transformer.width

    # -- what subclasses provide ------------------------------------------------------------
    def captions(self, classnames: list[str]) -> list[str]:
        raise NotImplementedError

    def vision_prompts(self) -> Layered:
        return ()

    def vision_biases(self) -> Layered:
        return ()

    def text_prompts(self) -> Layered:
        return ()

    def text_biases(self) -> Layered:
        return ()

    @property
    def text_is_constant(self) -> bool:
        """True when no learnable tensor enters the text tower (features can be computed once)."""
        return not any(t is not None for t in (*self.text_prompts(), *self.text_biases()))

    @property
    def vision_is_constant(self) -> bool:
        """True when no learnable tensor enters the image tower (features are the same for every seed)."""
        return not any(t is not None for t in (*self.vision_prompts(), *self.vision_biases()))

    # -- shared machinery -----------------------------------------------------------------
    def _tokenize(self, clip: LoadedClip) -> None:
        """Tokenise the class captions once; kept as a non-persistent buffer (C×L)."""
        captions = self.captions(self.classnames)
        tokens = clip.tokenizer(captions)  # C×L_ctx, zero-padded
        if bool((tokens[:, -1] != 0).any()):
            longest = max(captions, key=len)
            raise UserError(
                f"caption {longest!r} does not fit the {tokens.shape[1]}-token text context of {clip.name} — "
                "use fewer text prompt tokens (n_ctx_text) or shorter class names"
            )
        self.register_buffer("tokens", tokens.to(clip.device), persistent=False)

    def text_features(
        self,
        model: nn.Module,
        attention: Attention = "sdpa",
        recorder: Recorder | None = None,
        truncate: bool = True,
    ) -> torch.Tensor:
        feats = encode_text(
            model,
            self.tokens,
            prompts=self.text_prompts(),
            biases=self.text_biases(),
            n_ctx=self.n_ctx_text,
            truncate=truncate,
            attention=attention,
            recorder=recorder,
        )
        return F.normalize(feats, dim=-1)  # C×E

    def image_features(
        self,
        model: nn.Module,
        images: torch.Tensor,
        attention: Attention = "sdpa",
        recorder: Recorder | None = None,
    ) -> torch.Tensor:
        feats = encode_image(
            model, images, self.vision_prompts(), self.vision_biases(), attention=attention, recorder=recorder
        )
        return F.normalize(feats, dim=-1)  # B×E

    def logits(
        self, model: nn.Module, images: torch.Tensor, text_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        txt = self.text_features(model) if text_features is None else text_features
        img = self.image_features(model, images)
        logits = model.logit_scale.exp() * img @ txt.to(img.dtype).T  # B×C
        bias = getattr(model, "logit_bias", None)  # a learned scalar (SigLIP-style); open_clip adds it too
        return logits if bias is None else logits + bias.to(logits.dtype)

    def num_learnable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- persistence ----------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hparams": self.hparams,
            "backbone": self.backbone,
            "shapes": {k: list(v.shape) for k, v in self.state_dict().items()},
        }

    def save(self, path: str | Path, **record: Any) -> None:
        """Write the learned tensors; ``record`` (train.py: the job's identity and status) joins the header."""
        from safetensors.torch import save

        from promptbias.io import atomic_path

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        header = self.header() | record
        data = save(tensors, metadata={"promptbias": json.dumps(header)})
        with atomic_path(path, suffix=".safetensors") as tmp:
            tmp.write_bytes(data)  # a full disk is an OSError here (→ one-line error in atomic_path)

    @staticmethod
    def read_header(path: str | Path) -> dict[str, Any]:
        """The ``promptbias`` header of a method file (kind, hparams, shapes, the job's record)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({exc}) — {_retrain(path)}") from None
        if "promptbias" not in meta:
            raise UserError(f"{path}: no promptbias header — this is not a promptbias method file")
        try:
            header = json.loads(meta["promptbias"])
        except ValueError:
            header = None
        if not (
            isinstance(header, dict)
            and isinstance(header.get("kind"), str)
            and isinstance(header.get("hparams"), dict)
            and isinstance(header.get("shapes"), dict)
        ):
            raise UserError(
                f"{path}: damaged promptbias header (not a JSON object with kind, hparams and shapes) — "
                f"{_retrain(path)}"
            )
        return header

    @classmethod
    def load(
        cls,
        path: str | Path,
        clip: LoadedClip,
        classnames: list[str],
        template: str,
        expect_kind: str | None = None,
    ) -> Method:
        """The method a file holds, refused unless its tensors are exactly what the method declares."""
        from safetensors.torch import load_file

        header = cls.read_header(path)
        kind = header["kind"]
        wanted = expect_kind or (cls.kind or None)
        if wanted and kind != wanted:
            raise UserError(
                f"{path}: holds a {kind!r} method, expected {wanted!r} — point to the right run folder"
            )
        method = build_method(kind, clip, classnames, template, **header["hparams"])
        state = load_file(str(path))
        check_tensors(path, state, method.state_dict(), header["shapes"], f"{kind} on {clip.name}")
        method.load_state_dict(state)
        return method.to(clip.device)


def _retrain(path: str | Path) -> str:
    """The fix for a damaged or foreign method file: train it again from scratch."""
    return f"retrain: delete {Path(path).parent}/ and rerun the training stage"


def check_tensors(
    path: str | Path,
    state: dict[str, torch.Tensor],
    declared: dict[str, torch.Tensor],
    recorded_shapes: dict[str, Any],
    what: str,
) -> None:
    """UserError unless ``state`` has exactly the declared tensor names, shapes and dtypes, the header's
    recorded shapes are those of the file's tensors, and every value is finite (nothing is ever cast)."""
    for name in sorted(set(state) | set(declared) | set(recorded_shapes)):
        if name not in state:
            raise UserError(f"{path}: tensor {name!r} is missing ({what} declares it) — {_retrain(path)}")
        if name not in declared:
            raise UserError(f"{path}: tensor {name!r} is not one of {what}'s tensors — {_retrain(path)}")
        got, want = state[name], declared[name]
        if recorded_shapes.get(name) != list(got.shape):
            raise UserError(
                f"{path}: tensor {name!r} holds shape {list(got.shape)} and the header records "
                f"{recorded_shapes.get(name)}: they do not match (the file was edited after training) — "
                f"{_retrain(path)}"
            )
        if got.shape != want.shape:
            raise UserError(
                f"{path}: tensor {name!r} holds shape {list(got.shape)} and {what} declares "
                f"{list(want.shape)}: they do not match (trained for another backbone or configuration) — "
                f"{_retrain(path)}"
            )
        if got.dtype != want.dtype:
            raise UserError(
                f"{path}: tensor {name!r} is {str(got.dtype).removeprefix('torch.')}, {what} declares "
                f"{str(want.dtype).removeprefix('torch.')} (the file was converted; promptbias never casts "
                f"learned tensors) — {_retrain(path)}"
            )
        if not bool(torch.isfinite(got).all()):
            raise UserError(
                f"{path}: tensor {name!r} holds NaN or infinite values — the file is damaged or came from a "
                f"diverged run that promptbias did not write; {_retrain(path)}"
            )


def normal_init(*shape: int, generator: torch.Generator | None = None) -> nn.Parameter:
    """N(0, 0.02²) initialisation used by the reference for deep prompts."""
    return nn.Parameter(torch.randn(*shape, generator=generator) * 0.02)


def layer_list(params: nn.ParameterDict, n_layers: int) -> list[torch.Tensor | None]:
    """ParameterDict keyed by layer index → per-layer list with None where absent."""
    return [params.get(str(i)) for i in range(n_layers)]


def check_depth(value: int, layers: int, key: str, backbone: str) -> None:
    if value > layers:
        raise UserError(
            f"{key}: {value} is deeper than the {layers} layers of {backbone} — use at most {layers}"
        )
