"""The block-by-block encoders reproduce open_clip and keep the exactness DESIGN.md §3 requires."""

from __future__ import annotations

import pytest
import torch

from promptbias.model.blocks import run_block
from promptbias.model.encoders import Recorder, TextParts, context_length_needed, encode_image, encode_text

ATOL = 1e-5


@pytest.mark.parametrize("attention", ["module", "sdpa", "explicit"])
def test_loops_reproduce_open_clip_tiny(tiny_clip, tiny_images, attention, classnames):
    model = tiny_clip.model
    tokens = tiny_clip.tokenizer([f"a photo of a {c}." for c in classnames])
    with torch.no_grad():
        torch.testing.assert_close(
            encode_image(model, tiny_images, attention=attention),
            model.encode_image(tiny_images),
            atol=ATOL,
            rtol=0,
        )
        torch.testing.assert_close(
            encode_text(model, tokens, attention=attention, truncate=False),
            model.encode_text(tokens),
            atol=ATOL,
            rtol=0,
        )


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_loops_reproduce_open_clip_vitb16(vitb16, attention, classnames):
    model = vitb16.model
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = vitb16.tokenizer([f"a photo of a {c}." for c in classnames])
    with torch.no_grad():
        torch.testing.assert_close(
            encode_image(model, images, attention=attention), model.encode_image(images), atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            encode_text(model, tokens, attention=attention), model.encode_text(tokens), atol=ATOL, rtol=0
        )


def test_truncated_context_gives_identical_eos_features(vitb16, classnames):
    model = vitb16.model
    tokens = vitb16.tokenizer([f"a photo of a {c}." for c in classnames])
    parts = TextParts.of(model)
    needed = context_length_needed(tokens, parts)
    assert needed == int(tokens.argmax(-1).max()) + 1 < tokens.shape[1]
    with torch.no_grad():
        full = encode_text(model, tokens, truncate=False)
        cut = encode_text(model, tokens, truncate=True)
    torch.testing.assert_close(cut, full, atol=ATOL, rtol=0)


def test_fast_and_explicit_attention_agree_and_capture_probabilities(tiny_clip, tiny_images):
    model = tiny_clip.model
    tokens = tiny_clip.tokenizer(["a photo of a cat.", "a photo of a big dog."])
    rec_v, rec_t = Recorder(), Recorder()
    img_fast = encode_image(model, tiny_images)
    img_expl = encode_image(model, tiny_images, recorder=rec_v)
    txt_fast = encode_text(model, tokens)
    txt_expl = encode_text(model, tokens, recorder=rec_t)
    torch.testing.assert_close(img_expl, img_fast, atol=ATOL, rtol=0)
    torch.testing.assert_close(txt_expl, txt_fast, atol=ATOL, rtol=0)

    n_layers = len(model.visual.transformer.resblocks)
    assert len(rec_v.probs) == n_layers and len(rec_t.probs) == len(model.transformer.resblocks)
    for p in rec_v.probs + rec_t.probs:
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-6, rtol=0)
    for p in rec_t.probs:  # causal: nothing above the diagonal
        upper = torch.triu(torch.ones(p.shape[-2:], dtype=torch.bool), diagonal=1)
        assert p[..., upper].abs().max() == 0

    # gradients of a logit reach every layer's probabilities
    logit = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(img_expl[:1], txt_expl[:1]).sum()
    grads = torch.autograd.grad(logit, rec_v.probs + rec_t.probs)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_need_weights_attention_is_not_differentiable(tiny_clip, tiny_images):
    """Documents the pitfall the explicit path exists for."""
    blk = tiny_clip.model.visual.transformer.resblocks[0]
    x = tiny_clip.model.visual._embeds(tiny_images).requires_grad_(True)
    y = blk.ln_1(x)
    out, weights = blk.attn(y, y, y, need_weights=True, average_attn_weights=False)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.sum(), weights)


def test_attention_capture_leaves_model_bit_identical(tiny_clip, tiny_images):
    model = tiny_clip.model
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model.encode_image(tiny_images)
    encode_image(model, tiny_images, recorder=Recorder(keep_inputs=True, keep_values=True))
    after = model.encode_image(tiny_images)
    assert torch.equal(before, after)
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())


def test_vision_prompts_are_stripped_and_act_only_through_attention(tiny_clip, tiny_images):
    model = tiny_clip.model
    width = model.visual.transformer.width
    n_layers = len(model.visual.transformer.resblocks)
    g = torch.Generator().manual_seed(3)
    prompts_a = [torch.randn(2, width, generator=g) for _ in range(n_layers)]
    prompts_b = [torch.randn(2, width, generator=g) for _ in range(n_layers)]
    with torch.no_grad():
        assert not torch.allclose(
            encode_image(model, tiny_images, prompts_a), encode_image(model, tiny_images, prompts_b)
        )
        # cut the attention output: prompts can then no longer reach CLS
        saved = [
            (b.attn.out_proj.weight.clone(), b.attn.out_proj.bias.clone())
            for b in model.visual.transformer.resblocks
        ]
        try:
            for b in model.visual.transformer.resblocks:
                b.attn.out_proj.weight.zero_()
                b.attn.out_proj.bias.zero_()
            for pool in ("tok", "avg"):
                model.visual.pool_type = pool
                torch.testing.assert_close(
                    encode_image(model, tiny_images, prompts_a),
                    encode_image(model, tiny_images, prompts_b),
                    atol=0,
                    rtol=0,
                )
                torch.testing.assert_close(
                    encode_image(model, tiny_images, prompts_a),
                    encode_image(model, tiny_images),
                    atol=0,
                    rtol=0,
                )
        finally:
            model.visual.pool_type = "tok"
            for b, (w, bias) in zip(model.visual.transformer.resblocks, saved, strict=True):
                b.attn.out_proj.weight.copy_(w)
                b.attn.out_proj.bias.copy_(bias)


def test_text_prompts_keep_sequence_length_and_eos(tiny_clip):
    model = tiny_clip.model
    tokens = tiny_clip.tokenizer(["X X a photo of a cat.", "X X a photo of a big dog."])
    width = TextParts.of(model).transformer.width
    rec = Recorder(keep_inputs=True)
    prompts = [torch.randn(2, width), torch.randn(2, width)]
    encode_text(model, tokens, prompts=prompts, n_ctx=2, recorder=rec)
    length = context_length_needed(tokens, TextParts.of(model))
    assert all(x.shape[1] == length for x in rec.inputs)
    # the second block's input carries the layer-1 prompt verbatim at positions 1..n_ctx
    torch.testing.assert_close(rec.inputs[1][0, 1:3], prompts[1], atol=0, rtol=0)


def test_module_block_path_equals_reimplementation(tiny_clip):
    blk = tiny_clip.model.transformer.resblocks[0]
    x = torch.randn(2, 9, blk.attn.embed_dim)
    torch.testing.assert_close(
        run_block(blk, x, True, "module"), run_block(blk, x, True, "sdpa"), atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        run_block(blk, x, False, "module"), run_block(blk, x, False, "explicit"), atol=ATOL, rtol=0
    )
