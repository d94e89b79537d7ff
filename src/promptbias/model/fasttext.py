"""Exact fast path of the text tower: length buckets, shared prefix, EOS-only last block.

    plan = plan_text(tokens, eos, n_ctx=2, n_buckets=4, shared_prefix=True)
    feats = encode_text_fast(parts, tokens, plan, prompts, biases, n_ctx=2)      # == encode_text(...)

Three savings, each exact up to floating-point rounding (tests/test_perf_exactness.py):

* **length buckets** (``buckets``) — classes are sorted by EOS position and split into ≤ ``n_buckets`` groups
  (boundaries chosen by dynamic programming to minimise padded tokens); each group is padded only to its
  own longest EOS. Under the causal mask a token never sees anything after it, so padding after a row's EOS
  cannot change that row's EOS feature. Features are put back in the callers' class order.
* **shared prefix** (``shared_prefix``) — the first ``P`` positions (SOS, the ``n_ctx`` learnable context slots and the
  template words before the first position where any two captions differ, capped below the earliest EOS)
  hold the same tokens for every class. Deep prompts and biases are class-independent and the causal mask
  keeps later tokens out, so the prefix's hidden states are identical for every class at every layer: they
  are computed once (1×P×W) and every class's suffix attends to [prefix K/V; own K/V]. The suffix mask is
  the *lower-right* aligned causal mask (suffix query j sees keys ≤ P + j) — ``is_causal=True`` would align
  it top-left and be wrong when Lq ≠ Lk. Gradients from all classes flow into the single prefix.
* **EOS-only last block** (``prune_last``) — the last block computes K/V for every token but the query, output
  projection and MLP only for each class's EOS row (the only row that is pooled).

Requirements checked by :func:`fast_path_applies`: causal text tower pooled at the EOS/argmax token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

Layered = Sequence[torch.Tensor | None]


@dataclass(frozen=True)
class TextPlan:
    """How the C class prompts are split: shared prefix length and buckets over the EOS-sorted classes."""

    prefix: int  # P: positions 0..P-1 are shared by every class (0: no shared prefix)
    order: torch.Tensor  # C long: class indices sorted by EOS position
    inverse: torch.Tensor  # C long: sorted position of each original class
    eos: torch.Tensor  # C long: EOS position of each class in *sorted* order
    buckets: tuple[tuple[int, int, int], ...]  # (start, end, length) in sorted order; length = padded L

    def tokens_per_layer(self) -> int:
        """Token rows pushed through one (non-last) block: prefix once + every bucket's padded suffix."""
        return self.prefix + sum((e - s) * (length - self.prefix) for s, e, length in self.buckets)


def shared_prefix_length(tokens: torch.Tensor, eos: torch.Tensor, n_ctx: int) -> int:
    """Longest P with identical ids in positions < P for all rows (context slots count as identical).

    Capped at the earliest EOS so that every class keeps at least its EOS token in its suffix. Returns 0
    when the context slots would not fit inside the prefix (then no prefix is shared).
    """
    limit = int(eos.min())
    same = (tokens[:, :limit] == tokens[:1, :limit]).all(dim=0)  # L: position identical across classes
    same[1 : 1 + n_ctx] = True  # replaced by the class-independent context prompts
    differs = (~same).nonzero()
    prefix = int(differs[0]) if len(differs) else limit
    return prefix if prefix >= 1 + n_ctx else 0


def choose_buckets(lengths: list[int], n_buckets: int, prefix: int) -> list[tuple[int, int, int]]:
    """Split sorted ``lengths`` into ≤ n_buckets contiguous groups minimising Σ count·(max − prefix)."""
    values = sorted(set(lengths))
    counts = [lengths.count(v) for v in values]
    m = len(values)
    k = max(1, min(n_buckets, m))
    inf = float("inf")
    # best[b][j]: min cost of covering values[:j] with b groups; cut[b][j]: start index of the last group
    best = [[inf] * (m + 1) for _ in range(k + 1)]
    cut = [[0] * (m + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for b in range(1, k + 1):
        for j in range(1, m + 1):
            n = 0
            for i in range(j - 1, -1, -1):  # last group = values[i:j]
                n += counts[i]
                cost = best[b - 1][i] + n * (values[j - 1] - prefix)
                if cost < best[b][j]:
                    best[b][j], cut[b][j] = cost, i
    b = min(range(1, k + 1), key=lambda bb: best[bb][m])
    groups = []
    j = m
    while j > 0:
        i = cut[b][j]
        groups.append((i, j))
        j, b = i, b - 1
    groups.reverse()
    out, start = [], 0
    for i, j in groups:
        n = sum(counts[i:j])
        out.append((start, start + n, values[j - 1]))
        start += n
    return out


def plan_text(
    tokens: torch.Tensor,  # C×L_tok
    eos: torch.Tensor,  # C: pooled position per class
    n_ctx: int,
    n_buckets: int = 4,
    shared_prefix: bool = True,
) -> TextPlan:
    """Sort classes by EOS, choose the shared prefix and the buckets (one small host sync)."""
    eos_sorted, order = torch.sort(eos, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    prefix = shared_prefix_length(tokens, eos, n_ctx) if shared_prefix else 0
    lengths = (eos_sorted + 1).tolist()
    buckets = choose_buckets(lengths, max(1, n_buckets), prefix)
    return TextPlan(prefix=prefix, order=order, inverse=inverse, eos=eos_sorted, buckets=tuple(buckets))


def _layer(seq: Layered, index: int) -> torch.Tensor | None:
    return seq[index] if index < len(seq) else None


def _replace_context(x: torch.Tensor, ctx: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Put ctx (n_ctx×W) at positions 1..n_ctx of every row of x (R×T×W)."""
    if ctx.shape[0] != n_ctx:
        raise ValueError(f"text prompt has {ctx.shape[0]} tokens, expected n_ctx={n_ctx}")
    return torch.cat([x[:, :1], ctx.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + n_ctx :]], dim=1)


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    """R×T×W → R×H×T×hd."""
    R, T, W = t.shape
    return t.view(R, T, H, W // H).transpose(1, 2)


def _merge(o: torch.Tensor) -> torch.Tensor:
    """R×H×T×hd → R×T×W."""
    R, H, T, hd = o.shape
    return o.transpose(1, 2).reshape(R, T, H * hd)


def _kv(attn: torch.nn.MultiheadAttention, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K, V heads (R×H×T×hd each) of layer-normed y (R×T×W)."""
    W = y.shape[-1]
    kv = F.linear(
        y, attn.in_proj_weight[W:], attn.in_proj_bias[W:] if attn.in_proj_bias is not None else None
    )
    k, v = kv.split(W, dim=-1)
    return _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def _q(attn: torch.nn.MultiheadAttention, y: torch.Tensor) -> torch.Tensor:
    W = y.shape[-1]
    q = F.linear(y, attn.in_proj_weight[:W], attn.in_proj_bias[:W] if attn.in_proj_bias is not None else None)
    return _heads(q, attn.num_heads)


def _finish(blk: torch.nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """Residual + out_proj of attention heads o (R×H×T×hd) for rows x (R×T×W), then the MLP half."""
    x = x + blk.ls_1(blk.attn.out_proj(_merge(o)))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _with_prefix(kv_pre: torch.Tensor | None, kv: torch.Tensor) -> torch.Tensor:
    """[prefix K or V expanded over rows; own K or V] along the sequence: R×H×(P+S)×hd."""
    if kv_pre is None:
        return kv
    return torch.cat([kv_pre.expand(kv.shape[0], -1, -1, -1), kv], dim=2)


def encode_text_fast(
    parts,  # promptbias.model.encoders.TextParts
    tokens: torch.Tensor,  # C×L_tok
    plan: TextPlan,
    prompts: Layered = (),
    biases: Layered = (),
    n_ctx: int = 0,
    prune_last: bool = True,
) -> torch.Tensor:
    """Text features C×E (not normalised), equal to the plain block loop at the truncated context."""
    cast = parts.transformer.get_cast_dtype()
    blocks = parts.transformer.resblocks
    P = plan.prefix
    pos = parts.positional_embedding
    dev = tokens.device

    pre: torch.Tensor | None = None  # 1×P×W
    if P > 0:
        pre = parts.token_embedding(tokens[:1, :P]).to(cast)
        p0 = _layer(prompts, 0)
        if p0 is not None:
            pre = _replace_context(pre, p0, n_ctx)
        pre = pre + pos[:P].to(cast)
    sufs: list[torch.Tensor] = []  # per bucket: Cb×(L_b−P)×W
    rows: list[torch.Tensor] = []  # per bucket: Cb, the EOS row inside the suffix
    masks = []
    for start, end, length in plan.buckets:
        idx = plan.order[start:end]
        x = parts.token_embedding(tokens[idx, P:length]).to(cast)
        if P == 0:
            p0 = _layer(prompts, 0)
            if p0 is not None:
                x = _replace_context(x, p0, n_ctx)
        sufs.append(x + pos[P:length].to(cast))
        rows.append(plan.eos[start:end] - P)
        masks.append(causal_lower_right(length - P, length) if P > 0 else None)

    n_layers = len(blocks)
    pooled: list[torch.Tensor] = []
    for layer, blk in enumerate(blocks):
        p = _layer(prompts, layer) if layer > 0 else None
        if p is not None:
            if pre is not None:
                pre = _replace_context(pre, p, n_ctx)
            else:
                sufs = [_replace_context(x, p, n_ctx) for x in sufs]
        b = _layer(biases, layer)
        last = prune_last and layer == n_layers - 1
        k_pre = v_pre = None
        if pre is not None:
            y_pre = blk.ln_1(pre)
            k_pre, v_pre = _kv(blk.attn, y_pre)  # 1×H×P×hd
            if not last:  # the last block's prefix output is never pooled
                o_pre = F.scaled_dot_product_attention(_q(blk.attn, y_pre), k_pre, v_pre, is_causal=True)
                pre = _finish(blk, pre, o_pre)
                if b is not None:
                    pre = pre + b.to(pre.dtype)
        new_sufs = []
        for i, x in enumerate(sufs):
            y = blk.ln_1(x)
            k, v = _kv(blk.attn, y)  # Cb×H×S×hd
            k_all, v_all = _with_prefix(k_pre, k), _with_prefix(v_pre, v)
            if last:
                sel = torch.arange(x.shape[0], device=dev)
                r = rows[i]
                x_eos = x[sel, r].unsqueeze(1)  # Cb×1×W
                q = _q(blk.attn, y[sel, r].unsqueeze(1))  # Cb×H×1×hd
                keys = torch.arange(k_all.shape[2], device=dev)
                allowed = (keys[None, :] <= (r + P)[:, None]).view(-1, 1, 1, k_all.shape[2])  # Cb×1×1×(P+S)
                o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allowed)
                x = _finish(blk, x_eos, o)  # Cb×1×W
            else:
                q = _q(blk.attn, y)
                if masks[i] is None:
                    o = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
                else:
                    o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=masks[i])
                x = _finish(blk, x, o)
            if b is not None:
                x = x + b.to(x.dtype)
            new_sufs.append(x)
        sufs = new_sufs

    for i, x in enumerate(sufs):
        if prune_last:
            pooled.append(x[:, 0])  # Cb×W
        else:
            pooled.append(x[torch.arange(x.shape[0], device=dev), rows[i]])
    out = parts.ln_final(torch.cat(pooled, dim=0))[plan.inverse]  # C×W, original class order
    if isinstance(parts.text_projection, torch.nn.Linear):
        return parts.text_projection(out)
    if parts.text_projection is not None:
        return out @ parts.text_projection
    return out
