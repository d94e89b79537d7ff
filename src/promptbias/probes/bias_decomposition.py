"""Bias decomposition: is the prompts' attention term of Eq. 12 an input-independent bias? Measured directly.

    c = key_contribution(probs, values, blk, keys)     # B×T×W: W_o·(Σ_{p∈keys} A_ip v_p), no out_proj bias
    stats = ContributionStats(); stats.add(c[mask], ...); stats.explained_share()
    result = PROBES["bias_decomposition"].run(ctx)

Eq. 12 splits a token's attention update into Σ_j a'_ij x_j + Σ_k a'_ik p_k. For every layer we compute the
second term exactly as the block applies it: per head o_i^h = Σ_{p∈prompts} A^h_ip v^h_p, heads concatenated
and sent through out_proj's weight (its bias is not part of the term) and the layer scale,
c_i = ls_1(W_o·concat_h o_i^h) ∈ R^W. Over all query tokens i of all samples (images or captions):

    c̄ = E[c_i]                         "the bias"   (key bias_norm = ‖c̄‖)
    explained_share = 1 − E‖c_i − c̄‖² / E‖c_i‖² = ‖c̄‖² / E‖c_i‖²

1 means the prompts add the same vector to every token of every input (a pure bias); 0 means their
contribution averages out. Vision queries: CLS + patches (variant ``prompt_tokens``) and CLS alone
(``prompt_cls``); text queries: positions after the prompt slots up to EOS (``prompt_tokens``) and EOS alone
(``prompt_eos``). The same decomposition with SOS as the only key (``sos_tokens``/``sos_eos``) is the
language model's own bias analogue (SOS sees only itself, so its value vector is input-independent) and
is what a prompt-free method (zeroshot, bias tuning) reports. Learned bias vectors: ``learned_bias``/norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from promptbias.probes.common import (
    Accumulator,
    ProbeContext,
    ProbeResult,
    capture_text,
    capture_vision,
    eos_of,
    text_chunks,
)
from promptbias.probes.registry import register_probe


def key_contribution(
    probs: torch.Tensor,  # B×H×T×T
    values: torch.Tensor,  # B×H×T×hd
    out_weight: torch.Tensor,  # W×W (out_proj.weight)
    keys: torch.Tensor,  # K key indices
    layer_scale: torch.nn.Module | None = None,
) -> torch.Tensor:
    """W_o·(Σ_{k∈keys} A_ik v_k) per query token (heads concatenated, no out_proj bias). B×T×W."""
    B, _H, T, _ = probs.shape
    o = probs[..., keys].double() @ values[:, :, keys, :].double()  # B×H×T×hd
    o = o.transpose(1, 2).reshape(B, T, -1)  # B×T×W
    c = o @ out_weight.double().T
    return layer_scale(c) if layer_scale is not None else c


@dataclass
class ContributionStats:
    """Streaming first and second moments of contributions c_i (one per query token)."""

    total: torch.Tensor | None = None  # W, Σ c_i
    sq: float = 0.0  # Σ ‖c_i‖²
    update_sq: float = 0.0  # Σ ‖u_i‖², u = the whole attention update of the same tokens
    input_sq: float = 0.0  # Σ ‖x_i‖², x = the block input of the same tokens
    mass: float = 0.0  # Σ mean_h Σ_{k∈keys} A_ik
    tokens: int = 0
    samples: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(
        self, c: torch.Tensor, u: torch.Tensor, x: torch.Tensor, mass: torch.Tensor, samples: int
    ) -> None:
        """c, u, x: M×W over the selected query tokens; mass: M."""
        s = c.double().sum(0).cpu()
        self.total = s if self.total is None else self.total + s
        self.sq += float((c.double() ** 2).sum())
        self.update_sq += float((u.double() ** 2).sum())
        self.input_sq += float((x.double() ** 2).sum())
        self.mass += float(mass.double().sum())
        self.tokens += c.shape[0]
        self.samples += samples

    def mean(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)

    def summary(self) -> dict[str, float]:
        m = max(self.tokens, 1)
        mean_sq = self.sq / m
        bias_sq = float((self.mean() ** 2).sum())
        return {
            "explained_share": bias_sq / mean_sq if mean_sq > 0 else float("nan"),
            "bias_norm": bias_sq**0.5,
            "rms_norm": mean_sq**0.5,
            "residual_rms": max(mean_sq - bias_sq, 0.0) ** 0.5,
            "update_rms_norm": (self.update_sq / m) ** 0.5,
            "input_rms_norm": (self.input_sq / m) ** 0.5,
            "key_mass": self.mass / m,
            "n_tokens": float(self.tokens),
        }


def _collect(
    stats: dict[tuple[str, int, str], ContributionStats],
    branch: str,
    rec,
    blocks,
    keys: dict[str, torch.Tensor],
    queries: dict[str, torch.Tensor],
) -> None:
    """keys: key-set name → indices; queries: variant suffix → B×T bool. Variant = f'{keyset}_{suffix}'."""
    for layer, (a, v, x, blk) in enumerate(zip(rec.probs, rec.values, rec.inputs, blocks, strict=True)):
        u = key_contribution(
            a, v, blk.attn.out_proj.weight, torch.arange(a.shape[-1], device=a.device), blk.ls_1
        )
        for keyset, idx in keys.items():
            if idx.numel() == 0:
                continue
            c = key_contribution(a, v, blk.attn.out_proj.weight, idx, blk.ls_1)  # B×T×W
            mass = a[..., idx].sum(-1).mean(1)  # B×T
            for suffix, mask in queries.items():
                st = stats.setdefault((branch, layer, f"{keyset}_{suffix}"), ContributionStats())
                st.add(c[mask], u[mask], x[mask], mass[mask], samples=a.shape[0])


@register_probe("bias_decomposition")
def bias_decomposition(ctx: ProbeContext) -> ProbeResult:
    """Prompt (and SOS) attention contribution per layer: its mean ("bias") and the variance share it explains."""
    model, method = ctx.model, ctx.method
    stats: dict[tuple[str, int, str], ContributionStats] = {}
    N = ctx.n_patches
    vblocks = model.visual.transformer.resblocks
    for batch in ctx.batches():
        with torch.no_grad():
            rec, _ = capture_vision(ctx, batch.images, keep_inputs=True, keep_values=True)
        B, _, T, _ = rec.probs[-1].shape
        pos = torch.arange(T, device=ctx.device).expand(B, T)
        prompts = torch.arange(1 + N, T, device=ctx.device)
        queries = {"tokens": pos <= N, "cls": pos == 0}
        _collect(stats, "vision", rec, vblocks, {"prompt": prompts}, queries)

    tblocks = _text_blocks(model)
    n_ctx = method.n_ctx_text
    for _, tokens in text_chunks(ctx):
        with torch.no_grad():
            rec, _ = capture_text(ctx, tokens, keep_inputs=True, keep_values=True)
        eos = eos_of(ctx, tokens)
        C, _, L, _ = rec.probs[-1].shape
        pos = torch.arange(L, device=ctx.device).expand(C, L)
        queries = {"tokens": (pos > n_ctx) & (pos <= eos[:, None]), "eos": pos == eos[:, None]}
        keys = {
            "prompt": torch.arange(1, 1 + n_ctx, device=ctx.device),
            "sos": torch.zeros(1, dtype=torch.long, device=ctx.device),
        }
        _collect(stats, "text", rec, tblocks, keys, queries)

    acc = Accumulator()
    arrays: dict[str, np.ndarray] = {}
    for (branch, layer, variant), st in sorted(stats.items()):
        for key, value in st.summary().items():
            acc.add_set(branch, variant, key, layer, -1, value, st.samples)
        arrays[f"{branch}/{variant}/mean/layer{layer}"] = st.mean().float().numpy()
    _learned(acc, arrays, method)
    conventions = {
        "contribution": "c_i = ls_1(W_o · concat_h(sum_{k in keys} A^h_ik v^h_k)), out_proj bias excluded; "
        "v includes the in_proj value bias; float64",
        "explained_share": "1 - E||c_i - c_bar||^2 / E||c_i||^2 = ||c_bar||^2 / E||c_i||^2, expectations over "
        "all selected query tokens of all samples (tokens pooled, every token weighted equally)",
        "keys": {
            "prompt": "vision prompts [1+N:] / text prompt slots 1..n_ctx_text",
            "sos": "text position 0 (SOS), the prompt-free bias analogue",
        },
        "queries": {
            "vision tokens": "CLS + patches (prompt rows excluded)",
            "vision cls": "CLS only",
            "text tokens": "positions n_ctx_text+1..EOS of each caption (after the prompt slots)",
            "text eos": "the EOS (pooled) position only",
        },
        "samples": "vision: the image sample; text: all class captions of the method (each once)",
        "summary_keys": {
            "bias_norm": "||c_bar||",
            "rms_norm": "sqrt(E||c_i||^2)",
            "residual_rms": "sqrt(E||c_i - c_bar||^2)",
            "update_rms_norm": "sqrt(E||u_i||^2), u = the whole attention update (all keys) of the same tokens",
            "input_rms_norm": "sqrt(E||x_i||^2), x = the block input (after prompt insertion)",
            "key_mass": "E[mean_h sum_{k in keys} A_ik]",
            "n_tokens": "query tokens pooled",
        },
        "learned": "learned_bias/norm: ||b_l|| per layer and branch (bias tuning); learned_prompt/norm_mean: "
        "mean over tokens of ||p|| per layer (prompts, layer 0 before ln_pre / positional embedding)",
        "zeroshot": "no prompts and no learned vectors: only the text sos_* rows (a non-empty, valid table)",
        "arrays": "<kind>.npz: c_bar per '<branch>/<variant>/mean/layer<l>' and learned vectors",
    }
    return ProbeResult(acc, conventions, arrays=arrays)


def _text_blocks(model):
    text = getattr(model, "text", None)
    return (text.transformer if text is not None else model.transformer).resblocks


def _learned(acc: Accumulator, arrays: dict[str, np.ndarray], method) -> None:
    for branch, vecs in (("vision", method.vision_biases()), ("text", method.text_biases())):
        for layer, b in enumerate(vecs):
            if b is not None:
                acc.add_set(branch, "learned_bias", "norm", layer, -1, float(b.detach().double().norm()), 1)
                arrays[f"{branch}/learned_bias/layer{layer}"] = b.detach().float().cpu().numpy()
    for branch, prompts in (("vision", method.vision_prompts()), ("text", method.text_prompts())):
        for layer, p in enumerate(prompts):
            if p is not None:
                acc.add_set(
                    branch,
                    "learned_prompt",
                    "norm_mean",
                    layer,
                    -1,
                    float(p.detach().double().norm(dim=-1).mean()),
                    1,
                )
