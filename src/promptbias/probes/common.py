"""Shared machinery of the probes: inputs, captured forwards, token roles, and the tidy accumulator.

    ctx = ProbeContext(clip, method, images=x, labels=y, ids=ids, settings=ProbeSettings(...))
    for batch in ctx.batches():                       # normalised float B×3×S×S on ctx.device
        rec = capture_vision(ctx, batch.images)       # method's forward, explicit attention, no grad
    roles = ctx_roles(ctx)                            # per class: role of every caption position ≤ EOS
    acc = Accumulator(); acc.add("vision", "cls_row", "patches", layer, head, summed_value, n)
    frame = acc.frame(dataset, method_id, seed, probe) # tidy long table (docs/interfaces.md)

A probe module only turns captured tensors into numbers; everything that is the same for every probe
(batching, the prompt-free "CLIP" baseline forward, caption roles, the long-format table) lives here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from promptbias.methods.base import Method, clean_classname
from promptbias.model.encoders import Recorder, TextParts, encode_image, encode_text, eos_positions
from promptbias.model.loading import LoadedClip
from promptbias.tables import PROBE_COLUMNS

TEXT_GROUPS = ("sos", "prompt", "template", "category", "period", "eos")
VISION_GROUPS = ("cls", "patches", "prompts")
TABLE_COLUMNS = PROBE_COLUMNS


@dataclass
class ProbeSettings:
    """The ``probes`` section of params, as the probes read it."""

    batch_size: int = 16
    start_layer: int = 0
    map_images: int = 4
    rotations: tuple[int, ...] = (0, 90, 180, 270)
    text_batch_size: int = 256  # captions per explicit text forward (text probes run over all classes)

    @classmethod
    def from_config(cls, pcfg: dict[str, Any]) -> ProbeSettings:
        return cls(
            batch_size=int(pcfg["batch_size"]),
            start_layer=int(pcfg["start_layer"]),
            map_images=int(pcfg["map_images"]),
            rotations=tuple(int(r) for r in pcfg["rotations"]),
        )


@dataclass
class Batch:
    images: torch.Tensor  # B×3×S×S float, normalised, on the device
    labels: torch.Tensor  # B long, on the device
    ids: list[str]  # image ids (relative paths)


@dataclass
class ProbeContext:
    """What a probe runs on: frozen CLIP, the method, a sample of test images (uint8), settings."""

    clip: LoadedClip
    method: Method
    images: torch.Tensor  # N×3×S×S uint8 (CPU)
    labels: torch.Tensor  # N long
    ids: list[str]
    settings: ProbeSettings = field(default_factory=ProbeSettings)

    @property
    def model(self) -> torch.nn.Module:
        return self.clip.model

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def prepare(self, uint8: torch.Tensor) -> torch.Tensor:
        """uint8 B×3×S×S → normalised float32 on the device."""
        from promptbias.data.images import normalize

        return normalize(uint8.to(self.device), self.clip.mean, self.clip.std)

    def batches(self, limit: int | None = None) -> Iterator[Batch]:
        from promptbias.progress import track

        n = len(self.ids) if limit is None else min(limit, len(self.ids))
        bs = self.settings.batch_size
        for start in track(range(0, n, bs), desc="probe images", unit="batch"):
            stop = min(start + bs, n)
            yield Batch(
                images=self.prepare(self.images[start:stop]),
                labels=self.labels[start:stop].to(self.device),
                ids=self.ids[start:stop],
            )

    # -- geometry of the vision tower ---------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        g = self.model.visual.grid_size
        return (int(g[0]), int(g[1])) if isinstance(g, tuple | list) else (int(g), int(g))

    @property
    def patch(self) -> tuple[int, int]:
        p = self.model.visual.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, tuple | list) else (int(p), int(p))

    @property
    def n_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw


# -- captured forwards (explicit attention) ---------------------------------------------------


def capture_vision(
    ctx: ProbeContext, images: torch.Tensor, baseline: bool = False, **recorder: bool
) -> tuple[Recorder, torch.Tensor]:
    """Vision forward with the method's prompts/biases (or none: ``baseline``); returns (rec, B×E)."""
    rec = Recorder(track_grad=torch.is_grad_enabled(), **recorder)
    m = ctx.method
    prompts = () if baseline else m.vision_prompts()
    biases = () if baseline else m.vision_biases()
    feats = encode_image(ctx.model, images, prompts, biases, attention="explicit", recorder=rec)
    return rec, feats


def capture_text(
    ctx: ProbeContext, tokens: torch.Tensor, baseline: bool = False, **recorder: bool
) -> tuple[Recorder, torch.Tensor]:
    """Text forward of the given caption token rows (C×L) with the method's prompts/biases (or none)."""
    rec = Recorder(track_grad=torch.is_grad_enabled(), **recorder)
    m = ctx.method
    feats = encode_text(
        ctx.model,
        tokens,
        prompts=() if baseline else m.text_prompts(),
        biases=() if baseline else m.text_biases(),
        n_ctx=0 if baseline else m.n_ctx_text,
        attention="explicit",
        recorder=rec,
    )
    return rec, feats


def text_chunks(ctx: ProbeContext) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(class indices, token rows) of all class captions in chunks (text probes average over classes)."""
    tokens = ctx.method.tokens
    step = ctx.settings.text_batch_size
    for start in range(0, tokens.shape[0], step):
        idx = torch.arange(start, min(start + step, tokens.shape[0]), device=tokens.device)
        yield idx, tokens[idx]


def eos_of(ctx: ProbeContext, tokens: torch.Tensor) -> torch.Tensor:
    """EOS (pooled) position of each caption by the model's pooling rule — never simply row −1."""
    return eos_positions(tokens, TextParts.of(ctx.model))


def logit_scale(ctx: ProbeContext) -> torch.Tensor:
    return ctx.model.logit_scale.exp()


def scaled_cosine(ctx: ProbeContext, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale)·cos(img_b, txt_b) per pair. B."""
    return logit_scale(ctx) * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1)


# -- caption token roles ----------------------------------------------------------------------


def _word_ids(tokenizer: Any, text: str) -> list[int]:
    """BPE ids of ``text`` without SOS/EOS (CLIP's SimpleTokenizer: EOT has the largest id; HF tokenizers are
    refused at load, see ``promptbias.model.loading.check_config``)."""
    if not text.strip():
        return []
    row = tokenizer([text])[0]
    eos = int(row.argmax())
    return row[1:eos].tolist()


def caption_template(method: Method) -> str:
    """The method's caption with ``{}`` for the class name ("a photo of a {}.", "X X {}.", …)."""
    return method.captions(["{}"])[0]


def text_roles(method: Method, tokenizer: Any, eos: torch.Tensor) -> list[list[str]]:
    """Role of every caption position 0..EOS, per class: sos/prompt/template/category/period/eos.

    Prompt slots (positions 1..n_ctx_text) win over whatever word sits there; the class name is found
    right after the template prefix (the words before ``{}``); '.' tokens outside the class name are
    ``period``; every other word is ``template``.
    """
    template = caption_template(method)
    prefix = template.split("{}")[0]
    n_prefix = len(_word_ids(tokenizer, prefix))
    period = set(_word_ids(tokenizer, "."))
    tokens = method.tokens.cpu()
    eos = eos.cpu()
    roles: list[list[str]] = []
    n_ctx = method.n_ctx_text
    for c, name in enumerate(method.classnames):
        row = tokens[c].tolist()
        e = int(eos[c])
        cls_ids = _word_ids(tokenizer, clean_classname(name))
        start = 1 + n_prefix
        if row[start : start + len(cls_ids)] != cls_ids:  # fall back to a search (unusual templates)
            start = _find(row[: e + 1], cls_ids)
        r = ["template"] * (e + 1)
        r[0], r[e] = "sos", "eos"
        if start >= 0:
            for j in range(start, min(start + len(cls_ids), e)):
                r[j] = "category"
        for j in range(1, e):
            if r[j] == "template" and row[j] in period:
                r[j] = "period"
        for j in range(1, min(1 + n_ctx, e)):
            r[j] = "prompt"
        roles.append(r)
    return roles


def _find(row: list[int], sub: list[int]) -> int:
    for i in range(len(row) - len(sub) + 1):
        if sub and row[i : i + len(sub)] == sub:
            return i
    return -1


def role_masks(roles: list[list[str]], labels: torch.Tensor, length: int) -> dict[str, torch.Tensor]:
    """Bool masks B×length per text group (positions past EOS belong to no group)."""
    out = {g: torch.zeros(len(labels), length, dtype=torch.bool) for g in TEXT_GROUPS}
    for b, c in enumerate(labels.tolist()):
        for j, role in enumerate(roles[c][:length]):
            out[role][b, j] = True
    return out


def ctx_roles(ctx: ProbeContext) -> list[list[str]]:
    """Token roles of the method's class captions (EOS by the model's pooling rule)."""
    return text_roles(ctx.method, ctx.clip.tokenizer, eos_of(ctx, ctx.method.tokens))


# -- the tidy long table ----------------------------------------------------------------------


class Accumulator:
    """Running sums of per-sample values keyed by (branch, layer, head, variant, key); mean on output."""

    def __init__(self) -> None:
        self._sum: dict[tuple[str, int, int, str, str], float] = {}
        self._n: dict[tuple[str, int, int, str, str], int] = {}

    def add(self, branch: str, variant: str, key: str, layer: int, head: int, total: float, n: int) -> None:
        """Add ``total`` = the sum of ``n`` per-sample values."""
        k = (branch, int(layer), int(head), variant, key)
        self._sum[k] = self._sum.get(k, 0.0) + float(total)
        self._n[k] = self._n.get(k, 0) + int(n)

    def add_set(
        self, branch: str, variant: str, key: str, layer: int, head: int, value: float, n: int
    ) -> None:
        """Record a value that is already final (not a per-sample sum): stored as is, with its n."""
        k = (branch, int(layer), int(head), variant, key)
        self._sum[k] = float(value) * max(int(n), 1)
        self._n[k] = int(n)

    def add_head_row(self, layer: int, branch: str, variant: str, key: str, values: torch.Tensor) -> None:
        """values: B×H per-sample values of one layer (adds per head and the head mean)."""
        v = values.detach().double()
        n = v.shape[0]
        for head, total in enumerate(v.sum(0).tolist()):
            self.add(branch, variant, key, layer, head, total, n)
        self.add(branch, variant, key, layer, -1, float(v.mean(1).sum()), n)

    def rows(self) -> list[tuple[str, int, int, str, str, float, int]]:
        return [(*k, self._sum[k] / max(self._n[k], 1), self._n[k]) for k in self._sum]

    def frame(self, dataset: str, method: str, seed: int, probe: str):
        import pandas as pd

        rows = self.rows()
        df = pd.DataFrame(rows, columns=["branch", "layer", "head", "variant", "key", "value", "n"])
        df.insert(0, "probe", probe)
        df.insert(0, "seed", int(seed))
        df.insert(0, "method", method)
        df.insert(0, "dataset", dataset)
        df = df.astype({"layer": "int64", "head": "int64", "value": "float64", "n": "int64", "seed": "int64"})
        return df.sort_values(["branch", "variant", "key", "layer", "head"], kind="stable").reset_index(
            drop=True
        )


@dataclass
class ProbeResult:
    """What a probe returns: the accumulated table, its conventions, and optional arrays (npz)."""

    table: Accumulator
    conventions: dict[str, Any]
    arrays: dict[str, Any] | None = None
    summary_only: bool = False  # maps: the parquet is a small summary of the arrays
