"""Block-by-block CLIP encoders that admit deep prompts and per-block biases.

    feats = encode_image(clip.model, images)                              # == model.encode_image
    feats = encode_image(clip.model, images, prompts=[P0, P1, None], biases=[b0, b1])
    feats = encode_text(clip.model, tokens, prompts=[C0, C1], n_ctx=1)    # context truncated to max EOS

Vision prompts (IVLP): ``prompts[0]`` (P×W) goes through ``ln_pre`` and is appended after CLS+patches;
``prompts[l]`` for l ≥ 1 *replaces* the previous prompt outputs at the input of block l; ``None`` keeps
them flowing. Only the CLS token is pooled — prompts are stripped before ``_pool``.

Text prompts: ``prompts[0]`` (n_ctx×W) replaces the token embeddings at positions 1..n_ctx (right after
SOS) and gets their positional embeddings; ``prompts[l]`` for l ≥ 1 overwrites those positions at the
input of block l, without positional embedding. The causal mask is unchanged, so the EOS feature only
depends on tokens up to EOS: the context is truncated to the longest EOS position (exact).

Biases: ``biases[l]`` (W) is added to every token of block l's output.

``attention`` picks how each block computes attention (see :mod:`promptbias.model.blocks`); ``recorder``
collects per-layer tensors for probes (attention probabilities, block inputs, values).

Exact savings (on by default; they apply only on the fast path — ``attention="sdpa"`` and no recorder —
so the ``module``/``explicit`` paths and probes always run the plain loop):

* ``encode_image(..., prune_last=True)``: the last block computes the query, output projection and MLP
  for the CLS token only (K/V still for every token; no mask — CLS sees everything). Needs ``tok`` pooling.
* ``encode_text(..., buckets=4, shared_prefix=True, prune_last=True)`` (the CPU default; on CUDA the
  default is truncation only, see ``encode_text``): length buckets, the shared
  class-independent prefix computed once, and an EOS-only last block
  (:mod:`promptbias.model.fasttext`). ``buckets=1, shared_prefix=False, prune_last=False`` is the plain
  truncated loop. ``truncate=False`` (full context) always runs the plain loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from open_clip.transformer import text_global_pool

from promptbias.model.blocks import Attention, check_block, run_block, run_block_cls

Layered = Sequence[torch.Tensor | None]


@dataclass
class Recorder:
    """Per-layer tensors captured during an encoder pass (probes only).

    ``probs[l]``: B×H×T×T float32 attention probabilities of block l (with gradients);
    ``inputs[l]``: B×T×W block input after prompt insertion; ``values[l]``: B×H×T×hd (if keep_values).
    With ``track_grad`` (and grad mode on) the embeddings enter as a graph leaf, so gradients of a logit
    w.r.t. every ``probs[l]`` exist even though CLIP is frozen and the input needs no gradient.
    """

    def attach(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_grad and torch.is_grad_enabled() and not x.requires_grad:
            return x.detach().requires_grad_(True)
        return x

    keep_inputs: bool = False
    keep_values: bool = False
    track_grad: bool = True  # make the captured probabilities part of an autograd graph
    probs: list[torch.Tensor] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


@dataclass
class TextParts:
    """The text tower's pieces, wherever open_clip keeps them (CLIP flattens them, CustomTextCLIP nests)."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor  # L_max×W
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: torch.Tensor | torch.nn.Linear | None
    pool_type: str
    eos_id: int | None
    causal: bool

    @classmethod
    def of(cls, model: torch.nn.Module) -> TextParts:
        text = getattr(model, "text", None)
        if text is not None:  # CustomTextCLIP: text tower under model.text
            if getattr(text, "cls_emb", None) is not None:
                raise TypeError("text towers with a CLS embedding (CoCa-style) are not supported")
            if getattr(text, "use_pad_mask", False):
                raise TypeError("text towers with a padding attention mask (use_pad_mask) are not supported")
            return cls(
                token_embedding=text.token_embedding,
                positional_embedding=text.positional_embedding,
                transformer=text.transformer,
                ln_final=text.ln_final,
                text_projection=text.text_projection,
                pool_type=text.pool_type,
                eos_id=getattr(text, "eos_id", None),
                causal=getattr(text, "attn_mask", None) is not None,
            )
        return cls(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            text_projection=model.text_projection,
            pool_type=model.text_pool_type,
            eos_id=getattr(model, "text_eos_id", None),
            causal=getattr(model, "attn_mask", None) is not None,
        )


def check_model(model: torch.nn.Module) -> None:
    """Raise TypeError unless both towers can be run block by block here."""
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("vision towers with attentional pooling are not supported")
    check_blocks(visual.transformer.resblocks)
    parts = TextParts.of(model)
    if parts.pool_type not in ("argmax", "eos", "first", "last"):
        raise TypeError(f"text pool type {parts.pool_type!r} is not supported")
    check_blocks(parts.transformer.resblocks)


def check_blocks(blocks: Sequence[torch.nn.Module]) -> None:
    """TypeError unless every block is open_clip's default one (a q/k-norm block would give wrong numbers).

    Called by the encoders on every pass (a few isinstance checks), so a model that did not come through
    ``load_clip`` fails here instead of silently running the sdpa/explicit/fast paths on a block they do
    not reproduce.
    """
    for blk in blocks:
        check_block(blk)


def eos_positions(tokens: torch.Tensor, parts: TextParts) -> torch.Tensor:
    """Index of the pooled (EOS) token per row, by the model's pooling rule. C."""
    if parts.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if parts.pool_type == "eos":
        return (tokens == parts.eos_id).int().argmax(dim=-1)
    if parts.pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)


def context_length_needed(tokens: torch.Tensor, parts: TextParts) -> int:
    """Shortest context that leaves every EOS feature unchanged (the full length if not causal)."""
    if not parts.causal or parts.pool_type == "last":
        return tokens.shape[1]
    return int(eos_positions(tokens, parts).max()) + 1


def fast_text_applies(parts: TextParts) -> bool:
    """The fast text path needs a causal tower pooled at one token per row (argmax / first EOS)."""
    return parts.causal and parts.pool_type in ("argmax", "eos")


def _layer(seq: Layered, index: int) -> torch.Tensor | None:
    return seq[index] if index < len(seq) else None


def encode_image(
    model: torch.nn.Module,
    images: torch.Tensor,  # B×3×S×S, normalised
    prompts: Layered = (),
    biases: Layered = (),
    attention: Attention = "sdpa",
    recorder: Recorder | None = None,
    prune_last: bool = True,
) -> torch.Tensor:
    """Image features B×E (not normalised)."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    check_blocks(blocks)
    cls_only = (
        prune_last
        and attention == "sdpa"
        and recorder is None
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) == "tok"
    )
    x = visual._embeds(images)  # B×(1+N)×W, ln_pre applied
    if recorder is not None:
        x = recorder.attach(x)
    n_keep = x.shape[1]
    for layer, blk in enumerate(blocks):
        p = _layer(prompts, layer)
        if p is not None:
            if layer == 0:
                p = visual.ln_pre(p)  # per-token LN: same as concatenating before ln_pre
            x = torch.cat([x[:, :n_keep], p.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)  # B×(1+N+P)×W
        if cls_only and layer == len(blocks) - 1:
            x = run_block_cls(blk, x)  # B×1×W: only CLS is pooled
            n_keep = 1
        else:
            x = _run(blk, x, False, attention, recorder)
        b = _layer(biases, layer)
        if b is not None:
            x = x + b.to(x.dtype)
    pooled, _ = visual._pool(x[:, :n_keep])  # prompts stripped before pooling
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled


def encode_text(
    model: torch.nn.Module,
    tokens: torch.Tensor,  # C×L_tok token ids
    prompts: Layered = (),
    biases: Layered = (),
    n_ctx: int = 0,
    truncate: bool = True,
    attention: Attention = "sdpa",
    recorder: Recorder | None = None,
    buckets: int | None = None,
    shared_prefix: bool | None = None,
    prune_last: bool | None = None,
) -> torch.Tensor:
    """Text features C×E (not normalised) for the given prompts' token ids.

    ``None`` switches pick the faster default for the device (measured in bench/RESULTS.md): on CPU
    ``buckets``, ``shared_prefix`` and ``prune_last`` are on (fewer FLOPs win); on CUDA only ``truncate``
    — eager GPU runs are launch-bound and the extra kernels of buckets/prefix cost more than they save.
    Every combination gives the same features (tests/test_perf_exactness.py).
    """
    parts = TextParts.of(model)
    check_blocks(parts.transformer.resblocks)
    on_gpu = tokens.is_cuda
    buckets = (1 if on_gpu else 4) if buckets is None else buckets
    shared_prefix = (not on_gpu) if shared_prefix is None else shared_prefix
    prune_last = (not on_gpu) if prune_last is None else prune_last
    if (
        truncate
        and attention == "sdpa"
        and recorder is None
        and fast_text_applies(parts)
        and (buckets > 1 or shared_prefix or prune_last)
    ):
        from promptbias.model.fasttext import encode_text_fast, plan_text

        plan = plan_text(tokens, eos_positions(tokens, parts), n_ctx, buckets, shared_prefix)
        return encode_text_fast(parts, tokens, plan, prompts, biases, n_ctx, prune_last=prune_last)
    length = context_length_needed(tokens, parts) if truncate else tokens.shape[1]
    tokens = tokens[:, :length]
    cast = parts.transformer.get_cast_dtype()
    x = parts.token_embedding(tokens).to(cast)  # C×L×W
    if recorder is not None:
        x = recorder.attach(x)
    p0 = _layer(prompts, 0)
    if p0 is not None:
        x = _replace_context(x, p0.to(cast), n_ctx)
    x = x + parts.positional_embedding[:length].to(cast)
    for layer, blk in enumerate(parts.transformer.resblocks):
        p = _layer(prompts, layer) if layer > 0 else None
        if p is not None:
            x = _replace_context(x, p.to(x.dtype), n_ctx)
        x = _run(blk, x, parts.causal, attention, recorder)
        b = _layer(biases, layer)
        if b is not None:
            x = x + b.to(x.dtype)
    x = parts.ln_final(x)
    pooled = text_global_pool(x, tokens, parts.pool_type, eos_token_id=parts.eos_id)  # C×W
    if isinstance(parts.text_projection, torch.nn.Linear):
        return parts.text_projection(pooled)
    if parts.text_projection is not None:
        return pooled @ parts.text_projection
    return pooled


def _replace_context(x: torch.Tensor, ctx: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """Put ctx (n_ctx×W) at positions 1..n_ctx of every row of x (C×L×W)."""
    if ctx.shape[0] != n_ctx:
        raise ValueError(f"text prompt has {ctx.shape[0]} tokens, expected n_ctx={n_ctx}")
    return torch.cat([x[:, :1], ctx.expand(x.shape[0], -1, -1), x[:, 1 + n_ctx :]], dim=1)


def _run(blk, x: torch.Tensor, causal: bool, attention: Attention, recorder: Recorder | None) -> torch.Tensor:
    if recorder is None:
        return run_block(blk, x, causal, attention)
    if recorder.keep_inputs:
        recorder.inputs.append(x)
    return run_block(
        blk,
        x,
        causal,
        "explicit",
        probs_out=recorder.probs,
        values_out=recorder.values if recorder.keep_values else None,
    )
