"""One transformer block of an open_clip tower, run three interchangeable ways.

    x = run_block(blk, x, causal=True, attention="sdpa")                 # fast path (training)
    x = run_block(blk, x, causal=True, attention="module")               # open_clip's own forward
    x = run_block(blk, x, causal=True, attention="explicit", probs_out=ps)  # keeps softmax(QKᵀ/√d)

``sdpa`` re-implements the block on the packed ``in_proj_weight`` with
``F.scaled_dot_product_attention(is_causal=...)`` — flash-eligible on GPU, and it avoids
``nn.MultiheadAttention``'s slow path under autocast. ``explicit`` computes the attention
probabilities in float32 and appends to ``probs_out`` the very tensor the output is computed from,
so ``torch.autograd.grad(logit, probs)`` works (the ``need_weights=True`` weights of
``nn.MultiheadAttention`` are a detached view). None of the modes changes the module.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock

Attention = Literal["sdpa", "module", "explicit"]


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """Additive float mask [L, L]: 0 on and below the diagonal, -inf above (open_clip's convention)."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


def check_block(blk: torch.nn.Module) -> None:
    if not isinstance(blk, ResidualAttentionBlock) or hasattr(blk, "ln_1_kv"):
        raise TypeError(
            f"unsupported transformer block {type(blk).__name__}: promptbias runs open_clip's default "
            "ResidualAttentionBlock (self-attention, no qk-norm/scaled-cosine variants)"
        )


def run_block(
    blk: ResidualAttentionBlock,
    x: torch.Tensor,  # B×T×W
    causal: bool,
    attention: Attention = "sdpa",
    probs_out: list[torch.Tensor] | None = None,
    values_out: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply one pre-LN residual block; returns B×T×W."""
    if attention == "module":
        mask = causal_mask(x.shape[1], x.device) if causal else None
        return blk(x, attn_mask=mask)
    y = blk.ln_1(x)
    attn_out = _self_attention(
        blk.attn, y, causal, explicit=attention == "explicit", probs_out=probs_out, values_out=values_out
    )
    x = x + blk.ls_1(attn_out)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _self_attention(
    attn: torch.nn.MultiheadAttention,
    y: torch.Tensor,  # B×T×W, already layer-normed
    causal: bool,
    explicit: bool,
    probs_out: list[torch.Tensor] | None,
    values_out: list[torch.Tensor] | None,
) -> torch.Tensor:
    B, T, W = y.shape
    H = attn.num_heads
    hd = W // H
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)  # B×T×3W
    q, k, v = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each B×H×T×hd
    if values_out is not None:
        values_out.append(v)
    if explicit:
        logits = (q.float() * hd**-0.5) @ k.float().transpose(-2, -1)  # B×H×T×T
        if causal:
            logits = logits + causal_mask(T, y.device)
        probs = logits.softmax(dim=-1)  # float32, rows sum to 1
        if probs_out is not None:
            probs_out.append(probs)
        o = probs.to(v.dtype) @ v  # B×H×T×hd
    else:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # B×H×T×hd
    o = o.transpose(1, 2).reshape(B, T, W)
    return attn.out_proj(o)


def run_block_cls(blk: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Last-block pruning for a CLS-pooled, non-causal tower: output only for token 0. B×T×W → B×1×W.

    K and V come from every token (CLS attends to all of them, prompts included — no causal mask); the
    query, output projection, residual and MLP run for the CLS row only. Exact: the other rows' outputs of
    the last block are never pooled.
    """
    attn = blk.attn
    B, T, W = x.shape
    H = attn.num_heads
    hd = W // H
    y = blk.ln_1(x)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(y[:, :1], w[:W], None if bias is None else bias[:W])  # B×1×W
    kv = F.linear(y, w[W:], None if bias is None else bias[W:])  # B×T×2W
    k, v = kv.view(B, T, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each B×H×T×hd
    o = F.scaled_dot_product_attention(q.view(B, 1, H, hd).transpose(1, 2), k, v)  # B×H×1×hd
    x0 = x[:, :1] + blk.ls_1(attn.out_proj(o.transpose(1, 2).reshape(B, 1, W)))
    return x0 + blk.ls_2(blk.mlp(blk.ln_2(x0)))
