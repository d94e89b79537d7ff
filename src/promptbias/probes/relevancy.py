"""Relevancy (Chefer et al.): gradient-weighted attention rollout for both towers (paper §3.2.2, Figs. 2–3).

    R = rollout(probs, grads, start_layer=0)   # B×T×T; probs/grads: per layer B×H×T×T
    result = PROBES["relevancy"].run(ctx)      # the probe: tidy rows per token group and position

Per image b with ground-truth class y_b, the scalar is s_b = exp(logit_scale)·cos(f(x_b), g(caption_y_b))
(the scaled ground-truth logit, no softmax); the batch's Σ_b s_b is differentiated once w.r.t. every
layer's attention probabilities of both towers (one ``autograd.grad`` call; pairs do not interact).
Then R₀ = I and, for layers l ≥ start_layer, Ā_l = mean_h((∂s/∂A_l ⊙ A_l)⁺), R ← R + Ā_l·R.

Read-outs: vision = the CLS row of R (CLS column = self, patches [1:1+N], prompts [1+N:]); text = the EOS
row (EOS found from the tokens by the model's pooling rule) over SOS, prompt slots, template words,
class-name tokens, '.', EOS. Columns past EOS are exactly 0 (causal mask). Each sample's read-out is
normalised to sum 1, then averaged over images (variants below). Per text position, the paper's Fig. 2
average counts every caption, with 0 at and after its EOS (``norm``); ``norm_reached`` averages only the
captions that reach the position. The zero-shot captions use ``probes.relevancy_template`` (the paper's
"a photo of a {}.") when it is set — the commands build that method, see promptbias.probes.commands.
"""

from __future__ import annotations

import torch

from promptbias.probes.common import (
    TEXT_GROUPS,
    Accumulator,
    ProbeContext,
    ProbeResult,
    capture_text,
    capture_vision,
    ctx_roles,
    eos_of,
    role_masks,
    scaled_cosine,
)
from promptbias.probes.registry import register_probe

RESET_PROMPT_ROWS = False  # see conventions: a replaced prompt slot is treated as one token across layers
EPS = 1e-12


def head_weighted(probs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Ā = mean_h((∇A ⊙ A)⁺). B×H×T×T → B×T×T."""
    return (grads * probs).clamp(min=0).mean(dim=1)


def rollout(
    probs: list[torch.Tensor],
    grads: list[torch.Tensor],
    start_layer: int = 0,
    reset_rows: dict[int, list[int]] | None = None,
) -> torch.Tensor:
    """R after all layers ≥ start_layer (R₀ = I). B×T×T (T of the last layer).

    ``reset_rows[l]``: rows set to one-hot (R[:, p, :] = e_p) just before layer l (replaced prompt slots).
    Tokens appended at a later layer enter R as identity rows/columns.
    """
    if not 0 <= start_layer < len(probs):
        raise ValueError(f"start_layer {start_layer} outside 0..{len(probs) - 1}")
    B, _, T0, _ = probs[0].shape
    R = torch.eye(T0, device=probs[0].device, dtype=torch.float32).expand(B, T0, T0).clone()  # B×T×T
    for layer, (a, g) in enumerate(zip(probs, grads, strict=True)):
        T = a.shape[-1]
        if R.shape[-1] < T:  # tokens appended at this layer: identity for them
            grown = torch.eye(T, device=R.device, dtype=R.dtype).expand(B, T, T).clone()
            grown[:, : R.shape[-1], : R.shape[-1]] = R
            R = grown
        if layer < start_layer:
            continue
        if reset_rows and reset_rows.get(layer):
            rows = torch.as_tensor(reset_rows[layer], device=R.device)
            R[:, rows, :] = 0
            R[:, rows, rows] = 1
        abar = head_weighted(a.detach().float(), g.detach().float())  # B×T×T
        R = R + torch.bmm(abar, R)
    return R


def _reset_plan(prompts, rows: list[int], n_layers: int) -> dict[int, list[int]]:
    if not RESET_PROMPT_ROWS or not rows:
        return {}
    return {
        layer: rows for layer in range(1, n_layers) if layer < len(prompts) and prompts[layer] is not None
    }


def _add_groups(acc: Accumulator, branch: str, variant: str, values: dict[str, torch.Tensor]) -> None:
    for key, v in values.items():  # v: B
        acc.add(branch, variant, key, -1, -1, float(v.sum()), v.shape[0])


def _vision_readout(acc: Accumulator, R: torch.Tensor, n_patches: int) -> None:
    row = R[:, 0, :].double()  # B×T, the CLS row
    cls, patches, prompts = row[:, 0], row[:, 1 : 1 + n_patches], row[:, 1 + n_patches :]
    raw = {"cls": cls, "patches": patches.sum(-1), "prompts": prompts.sum(-1)}
    _add_groups(acc, "vision", "raw", raw)
    total = row.sum(-1).clamp_min(EPS)
    _add_groups(acc, "vision", "norm_with_self", {k: v / total for k, v in raw.items()})
    others = (raw["patches"] + raw["prompts"]).clamp_min(EPS)  # the paper's R[:, 0, 1:]
    _add_groups(
        acc, "vision", "norm", {"patches": raw["patches"] / others, "prompts": raw["prompts"] / others}
    )
    B = row.shape[0]
    per_patch = (patches / others[:, None]).sum(0)
    for i in range(patches.shape[1]):
        acc.add("vision", "norm", f"patch_{i}", -1, -1, float(per_patch[i]), B)
    per_prompt = (prompts / others[:, None]).sum(0)
    for k in range(prompts.shape[1]):
        acc.add("vision", "norm", f"prompt_{k}", -1, -1, float(per_prompt[k]), B)


def _text_readout(
    acc: Accumulator,
    R: torch.Tensor,
    eos: torch.Tensor,
    masks: dict[str, torch.Tensor],
    n_ctx: int,
    last: int,
) -> float:
    """Adds the text rows; returns max |R[eos, eos+1:]| (0 by causality).

    ``last``: the largest EOS position over all class captions (the same for every batch, so each
    ``pos_<j>`` of the paper's average has all captions as its n).
    """
    B, L, _ = R.shape
    row = R[torch.arange(B, device=R.device), eos, :].double().cpu()  # B×L, the EOS row
    eos = eos.cpu()
    pos = torch.arange(L)
    after = (pos[None, :] > eos[:, None]).double()
    after_max = float((row.abs() * after).max()) if L else 0.0
    raw = {g: (row * masks[g].double()).sum(-1) for g in TEXT_GROUPS}
    _add_groups(acc, "text", "raw", raw)
    total = sum(raw.values()).clamp_min(EPS)
    _add_groups(acc, "text", "norm_with_self", {g: v / total for g, v in raw.items()})
    others = (total - raw["eos"]).clamp_min(EPS)  # the paper's R[:, eos, :eos]
    _add_groups(acc, "text", "norm", {g: raw[g] / others for g in TEXT_GROUPS if g != "eos"})
    normed = row / others[:, None]  # B×L
    for k in range(min(n_ctx, L)):
        acc.add("text", "norm", f"ctx_{k + 1}", -1, -1, float(normed[:, 1 + k].sum()), B)
    before = pos[None, :] < eos[:, None]  # B×L: positions before each caption's EOS
    kept = torch.where(before, normed, torch.zeros_like(normed))  # the paper: 0 at and after EOS
    for j in range(min(last + 1, L)):
        acc.add("text", "norm", f"pos_{j}", -1, -1, float(kept[:, j].sum()), B)
        valid = before[:, j]
        if bool(valid.any()):  # the other average: only the captions that reach position j
            acc.add(
                "text", "norm_reached", f"pos_{j}", -1, -1, float(normed[valid, j].sum()), int(valid.sum())
            )
    return after_max


@register_probe("relevancy")
def relevancy(ctx: ProbeContext) -> ProbeResult:
    """Chefer relevancy of the ground-truth logit: CLS row (vision) and EOS row (text) by token group."""
    acc = Accumulator()
    method = ctx.method
    roles = ctx_roles(ctx)
    start = ctx.settings.start_layer
    after_eos = 0.0
    last_eos = int(eos_of(ctx, method.tokens).max())  # past every caption's EOS all values are 0
    n_vision = len(ctx.model.visual.transformer.resblocks)
    for batch in ctx.batches():
        tokens = method.tokens[batch.labels]  # B×L: the ground-truth class's caption per image
        with torch.enable_grad():
            rec_v, img = capture_vision(ctx, batch.images)
            rec_t, txt = capture_text(ctx, tokens)
            s = scaled_cosine(ctx, img, txt)  # B, the scaled ground-truth logit
            grads = torch.autograd.grad(s.sum(), rec_v.probs + rec_t.probs)
        gv, gt = grads[:n_vision], grads[n_vision:]
        P = rec_v.probs[-1].shape[-1] - 1 - ctx.n_patches
        vrows = list(range(1 + ctx.n_patches, 1 + ctx.n_patches + P))
        Rv = rollout(rec_v.probs, list(gv), start, _reset_plan(method.vision_prompts(), vrows, n_vision))
        _vision_readout(acc, Rv, ctx.n_patches)
        n_text = len(rec_t.probs)
        trows = list(range(1, 1 + method.n_ctx_text))
        Rt = rollout(rec_t.probs, list(gt), start, _reset_plan(method.text_prompts(), trows, n_text))
        L = Rt.shape[-1]
        eos = eos_of(ctx, tokens)
        after_eos = max(
            after_eos,
            _text_readout(
                acc, Rt, eos, role_masks(roles, batch.labels.cpu(), L), method.n_ctx_text, last_eos
            ),
        )
        del rec_v, rec_t, grads, gv, gt
    conventions = {
        "scalar": "s_b = exp(logit_scale) * cos(image_b, text of ground-truth class y_b) — the scaled "
        "ground-truth logit, no softmax; sum over the batch differentiated once (pairs independent)",
        "gradients": "one torch.autograd.grad call w.r.t. all layers' attention probabilities of both towers",
        "head_aggregation": "Abar = mean_h(clamp(grad * A, min=0))",
        "update": "R0 = I; R <- R + Abar @ R for layers >= start_layer",
        "start_layer": start,
        "prompt_slot_reset": RESET_PROMPT_ROWS,
        "prompt_slot_reset_note": "False: a prompt slot replaced at the input of a layer keeps its relevancy "
        "row (treated as one token across layers)",
        "text_caption": "the ground-truth class's caption of the method (prompt slots after SOS)",
        "zeroshot_template": getattr(method, "template", None) if method.kind == "zeroshot" else None,
        "vision_readout": "CLS row R[:, 0, :]: cls = R[0,0] (self), patches = [1:1+N], prompts = [1+N:]",
        "text_readout": "EOS row R[:, eos, :] with eos from the tokens by the model's pooling rule "
        "(argmax for CLIP); groups sos/prompt/template/category/period/eos; padding after EOS excluded",
        "variants": {
            "norm": "per sample divided by the sum over all columns except the read-out token itself "
            "(the paper's R[:,0,1:] / R[:,eos,:eos]), then mean over images; per-position keys "
            "patch_<i> (row-major grid index), prompt_<k>, ctx_<k>, pos_<j> (the paper's Fig. 2: every "
            "caption counts, 0 at and after its EOS; n = all captions; j up to the longest caption's EOS)",
            "norm_reached": "text pos_<j> only: the norm value averaged over the captions whose EOS is "
            "after j (n = those captions)",
            "norm_with_self": "per sample divided by the sum of the whole row (self column included)",
            "raw": "unnormalised sums, mean over images",
        },
        "text_after_eos_max_abs": after_eos,
        "layer": "-1 (relevancy after all layers)",
        "head": "-1 (heads are aggregated by the gradient weighting)",
    }
    return ProbeResult(acc, conventions)
