"""The paper's methods: semantics of deep prompts and biases, parameter counts, persistence."""

from __future__ import annotations

import pytest
import torch

from promptbias.errors import UserError
from promptbias.methods import Method, build_method

TEMPLATE = "a photo of a {}."


def _perturbed(method: Method, name: str) -> Method:
    with torch.no_grad():
        dict(method.named_parameters())[name].add_(1.0)
    return method


def test_zero_bias_is_zero_shot_clip(tiny_clip, tiny_images, classnames):
    model = tiny_clip.model
    zs = build_method("zeroshot", tiny_clip, classnames, TEMPLATE)
    bias = build_method("bias", tiny_clip, classnames, TEMPLATE, depth_text=2, depth_vision=2)
    with torch.no_grad():
        torch.testing.assert_close(
            bias.logits(model, tiny_images), zs.logits(model, tiny_images), atol=1e-5, rtol=0
        )
        # and zero-shot itself equals open_clip's own encoders
        ref_img = torch.nn.functional.normalize(model.encode_image(tiny_images), dim=-1)
        ref_txt = torch.nn.functional.normalize(model.encode_text(zs.tokens), dim=-1)
        torch.testing.assert_close(
            zs.logits(model, tiny_images), model.logit_scale.exp() * ref_img @ ref_txt.T, atol=1e-4, rtol=0
        )


def test_zeroshot_uses_dataset_template(tiny_clip):
    zs = build_method("zeroshot", tiny_clip, ["Sea_or_Lake"], "a centered satellite photo of {}.")
    assert zs.captions(zs.classnames) == ["a centered satellite photo of Sea or Lake."]
    assert zs.num_learnable() == 0


@pytest.mark.parametrize("depth", [1, 2])
def test_deep_prompts_exist_only_below_depth(tiny_clip, tiny_images, classnames, depth):
    model = tiny_clip.model
    method = build_method(
        "prompt",
        tiny_clip,
        classnames,
        TEMPLATE,
        n_ctx_text=2,
        n_ctx_vision=2,
        depth_text=depth,
        depth_vision=depth,
    )
    n_layers = len(model.visual.transformer.resblocks)
    assert [p is not None for p in method.vision_prompts()] == [i < depth for i in range(n_layers)]
    assert [p is not None for p in method.text_prompts()] == [i < depth for i in range(n_layers)]
    # every existing prompt influences the logits (it is really used)...
    loss = method.logits(model, tiny_images).logsumexp(-1).sum()
    grads = torch.autograd.grad(loss, list(method.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    # ...and prompts handed to layers at or past the depth are ignored by the method
    assert len(list(method.parameters())) == 2 * depth


def test_prompt_text_init_and_placeholders(tiny_clip, classnames):
    from promptbias.model.encoders import TextParts

    emb = TextParts.of(tiny_clip.model).token_embedding.weight
    two = build_method(
        "prompt", tiny_clip, classnames, TEMPLATE, n_ctx_text=2, n_ctx_vision=0, depth_text=1, depth_vision=0
    )
    ids = tiny_clip.tokenizer(["a photo of a"])[0]
    torch.testing.assert_close(two.text_ctx["0"].detach(), emb[ids[1:3]], atol=0, rtol=0)
    assert two.captions(["cat"]) == ["a photo of a cat."]  # "of a" stay fixed words
    eight = build_method(
        "prompt", tiny_clip, classnames, TEMPLATE, n_ctx_text=8, n_ctx_vision=0, depth_text=1, depth_vision=0
    )
    assert eight.captions(["cat"]) == ["X X X X X X X X cat."]
    x_id = tiny_clip.tokenizer(["X"])[0][1]
    assert bool((eight.tokens[:, 1:9] == x_id).all())
    # the EOS index is where the tokenizer put EOT, for every class: prompts replace, never insert
    eos = eight.tokens.argmax(-1)
    assert bool((eight.tokens.gather(1, eos[:, None]) == eight.tokens.max()).all())
    assert abs(float(eight.text_ctx["0"].detach().std()) - 0.02) < 0.01


def test_changing_a_prompt_changes_features_only_where_used(tiny_clip, tiny_images, classnames):
    model = tiny_clip.model
    method = build_method(
        "prompt", tiny_clip, classnames, TEMPLATE, n_ctx_text=1, n_ctx_vision=1, depth_text=2, depth_vision=2
    )
    with torch.no_grad():
        img0, txt0 = method.image_features(model, tiny_images), method.text_features(model)
        _perturbed(method, "text_ctx.1")
        assert torch.equal(method.image_features(model, tiny_images), img0)
        assert not torch.allclose(method.text_features(model), txt0)
        _perturbed(method, "vision_ctx.1")
        assert not torch.allclose(method.image_features(model, tiny_images), img0)


@pytest.mark.slow
def test_parameter_matched_counts_on_vitb16(vitb16, classnames):
    prompt = build_method(
        "prompt", vitb16, classnames, TEMPLATE, n_ctx_text=1, n_ctx_vision=1, depth_text=12, depth_vision=12
    )
    bias = build_method("bias", vitb16, classnames, TEMPLATE, depth_text=12, depth_vision=12)
    assert prompt.num_learnable() == 15_360 == 12 * (512 + 768)
    assert bias.num_learnable() == 15_360


@pytest.mark.parametrize(
    ("kind", "hparams"),
    [
        ("prompt", dict(n_ctx_text=2, n_ctx_vision=3, depth_text=2, depth_vision=1)),
        ("bias", dict(depth_text=1, depth_vision=2)),
        ("zeroshot", {}),
    ],
)
def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_clip, tiny_images, classnames, kind, hparams):
    method = build_method(kind, tiny_clip, classnames, TEMPLATE, **hparams)
    with torch.no_grad():
        for p in method.parameters():
            p.normal_()
    path = tmp_path / "params.safetensors"
    method.save(path)
    loaded = Method.load(path, tiny_clip, classnames, TEMPLATE, expect_kind=kind)
    assert loaded.header() == method.header()
    for (k, a), (_, b) in zip(method.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(
            loaded.logits(tiny_clip.model, tiny_images), method.logits(tiny_clip.model, tiny_images)
        )


def test_loading_wrong_method_or_shape_fails_with_one_line(tmp_path, tiny_clip, classnames):
    path = tmp_path / "p.safetensors"
    build_method("bias", tiny_clip, classnames, TEMPLATE, depth_text=2, depth_vision=2).save(path)
    with pytest.raises(UserError, match="holds a 'bias' method, expected 'prompt'") as err:
        Method.load(path, tiny_clip, classnames, TEMPLATE, expect_kind="prompt")
    assert "\n" not in str(err.value)

    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["text_bias.0"] = torch.zeros(7)
    header = Method.read_header(path)
    import json

    save_file(state, str(path), metadata={"promptbias": json.dumps(header)})
    with pytest.raises(UserError, match="do not match"):
        Method.load(path, tiny_clip, classnames, TEMPLATE)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        Method.load(tmp_path / "junk.safetensors", tiny_clip, classnames, TEMPLATE)


def test_depth_beyond_layers_and_overlong_context_are_user_errors(tiny_clip, classnames):
    with pytest.raises(UserError, match="methods.prompt.depth_text: 3 is deeper than the 2 layers"):
        build_method("prompt", tiny_clip, classnames, TEMPLATE, depth_text=3, depth_vision=1)
    with pytest.raises(UserError, match="methods.bias.depth_vision"):
        build_method("bias", tiny_clip, classnames, TEMPLATE, depth_text=1, depth_vision=5)
    with pytest.raises(UserError, match="does not fit"):
        build_method("prompt", tiny_clip, classnames, TEMPLATE, n_ctx_text=64, depth_text=1, depth_vision=0)
