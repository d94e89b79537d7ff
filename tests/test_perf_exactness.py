"""Every exact speed-up leaves results unchanged (issue 8): a1 truncation, a2 buckets, a3 shared prefix,
a4 CLS/EOS-only last block, c/d features computed once. fp32 with explicit tolerances, fp64 where the
only difference is summation order."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from promptbias.methods import build_method
from promptbias.model.encoders import TextParts, encode_image, encode_text, eos_positions
from promptbias.model.fasttext import choose_buckets, plan_text, shared_prefix_length

FP32_ATOL = 1e-5
FP64_ATOL = 1e-12
TEMPLATE = "a photo of a {}."

# every combination of the text switches, by name
TEXT_SWITCHES = {
    "a2 buckets": {"buckets": 4, "shared_prefix": False, "prune_last": False},
    "a3 prefix": {"buckets": 1, "shared_prefix": True, "prune_last": False},
    "a4 eos-only": {"buckets": 1, "shared_prefix": False, "prune_last": True},
    "all": {"buckets": 4, "shared_prefix": True, "prune_last": True},
    "all, 2 buckets": {"buckets": 2, "shared_prefix": True, "prune_last": True},
}
PLAIN = {"buckets": 1, "shared_prefix": False, "prune_last": False}


def _double(clip):
    model = copy.deepcopy(clip.model).double()
    return model


def _layered(
    n_layers: int, rows: int | None, width: int, seed: int, dtype=torch.float32
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (width,) if rows is None else (rows, width)
    return [(torch.randn(*shape, generator=g) * 0.5).to(dtype).requires_grad_(True) for _ in range(n_layers)]


# --------------------------------------------------------------------------------------------- planning
def _brute_force_cost(lengths: list[int], k: int, prefix: int) -> int:
    values = sorted(lengths)
    best = None
    for cuts in itertools.chain.from_iterable(
        itertools.combinations(range(1, len(values)), r) for r in range(min(k, len(values)))
    ):
        bounds = [0, *cuts, len(values)]
        cost = sum((b - a) * (values[b - 1] - prefix) for a, b in itertools.pairwise(bounds))
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_bucket_choice_is_optimal_and_covers_every_class(k):
    g = torch.Generator().manual_seed(k)
    lengths = sorted(torch.randint(6, 20, (9,), generator=g).tolist())
    buckets = choose_buckets(lengths, k, prefix=5)
    assert len(buckets) <= k
    assert buckets[0][0] == 0 and buckets[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(buckets))
    for start, end, length in buckets:  # every class fits its bucket's padded length
        assert max(lengths[start:end]) == length
    cost = sum((e - s) * (length - 5) for s, e, length in buckets)
    assert cost == _brute_force_cost(lengths, k, prefix=5)


def test_shared_prefix_of_real_captions(vitb16, classnames):
    tok = vitb16.tokenizer
    parts = TextParts.of(vitb16.model)
    tokens = tok([f"a photo of a {c}." for c in classnames])
    eos = eos_positions(tokens, parts)
    assert shared_prefix_length(tokens, eos, n_ctx=0) == 5  # SOS a photo of a
    assert shared_prefix_length(tokens, eos, n_ctx=2) == 5  # context slots inside the prefix
    x8 = tok([f"X X X X X X X X {c}." for c in classnames])
    assert shared_prefix_length(x8, eos_positions(x8, parts), n_ctx=8) == 9
    # one class: the prefix stops right before its EOS, so its suffix is just the EOS token
    one = tok(["a photo of a cat."])
    assert shared_prefix_length(one, eos_positions(one, parts), n_ctx=0) == int(one.argmax())
    # captions that differ right after SOS share only SOS
    diff = tok(["banded texture.", "cat texture."])
    assert shared_prefix_length(diff, eos_positions(diff, parts), n_ctx=0) == 1
    plan = plan_text(tokens, eos, n_ctx=0, n_buckets=4)
    assert plan.tokens_per_layer() < len(classnames) * int(eos.max() + 1)


# ------------------------------------------------------------------------------------- text tower
@pytest.mark.parametrize("switches", list(TEXT_SWITCHES), ids=list(TEXT_SWITCHES))
def test_fast_text_equals_plain_loop_tiny_fp64(tiny_clip, classnames, switches):
    """Prompts at every layer and biases after every block, fp64: identical up to summation order."""
    model = _double(tiny_clip)
    parts = TextParts.of(model)
    n_layers, width = len(parts.transformer.resblocks), parts.transformer.width
    tokens = tiny_clip.tokenizer([f"X X a photo of a {c}." for c in classnames])
    prompts = _layered(n_layers, 2, width, 0, torch.float64)
    biases = _layered(n_layers, None, width, 1, torch.float64)
    fast = encode_text(model, tokens, prompts, biases, n_ctx=2, **TEXT_SWITCHES[switches])
    plain = encode_text(model, tokens, prompts, biases, n_ctx=2, **PLAIN)
    full = encode_text(model, tokens, prompts, biases, n_ctx=2, truncate=False)  # 77 tokens (a1 reference)
    torch.testing.assert_close(fast, plain, atol=FP64_ATOL, rtol=0)
    torch.testing.assert_close(fast, full, atol=FP64_ATOL, rtol=0)
    w = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * w).sum(), prompts + biases)
    g_full = torch.autograd.grad((full * w).sum(), prompts + biases)
    for a, b in zip(g_fast, g_full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("n_ctx", [0, 2, 8])
def test_fast_text_equals_open_clip_vitb16_fp32(vitb16, classnames, n_ctx):
    model = vitb16.model
    parts = TextParts.of(model)
    width = parts.transformer.width
    if n_ctx == 8:
        captions = [f"X X X X X X X X {c}." for c in classnames]
    else:
        captions = [f"a photo of a {c}." for c in classnames]
    tokens = vitb16.tokenizer(captions)
    with torch.no_grad():
        if n_ctx == 0:
            reference = model.encode_text(tokens)  # open_clip itself, 77 tokens, its own MHA
        else:
            prompts = _layered(12, n_ctx, width, 2)
            biases = _layered(12, None, width, 3)
            reference = encode_text(
                model, tokens, prompts, biases, n_ctx=n_ctx, truncate=False, attention="module"
            )
        fast = (
            encode_text(model, tokens)
            if n_ctx == 0
            else encode_text(model, tokens, prompts, biases, n_ctx=n_ctx)
        )
    torch.testing.assert_close(fast, reference, atol=FP32_ATOL, rtol=0)


def test_fast_text_keeps_class_order_and_single_class(tiny_clip, classnames):
    model = tiny_clip.model
    tokens = tiny_clip.tokenizer([f"a photo of a {c}." for c in classnames])
    perm = torch.randperm(len(classnames), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = encode_text(model, tokens)
        b = encode_text(model, tokens[perm])
        one = encode_text(model, tokens[3:4])
    torch.testing.assert_close(b, a[perm], atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(one, a[3:4], atol=FP32_ATOL, rtol=0)


def test_captions_without_common_words_still_exact(tiny_clip, classnames):
    """DTD-like "{} texture.": only SOS is shared, buckets still apply."""
    model = _double(tiny_clip)
    tokens = tiny_clip.tokenizer([f"{c} texture." for c in classnames])
    torch.testing.assert_close(
        encode_text(model, tokens), encode_text(model, tokens, **PLAIN), atol=FP64_ATOL, rtol=0
    )


def test_plain_paths_are_untouched_by_switches(tiny_clip, classnames):
    """module / explicit attention, recorders and truncate=False always run the plain loop."""
    from promptbias.model import fasttext

    model = tiny_clip.model
    tokens = tiny_clip.tokenizer([f"a photo of a {c}." for c in classnames])
    calls = []
    original = fasttext.encode_text_fast
    fasttext.encode_text_fast = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():
            encode_text(model, tokens, attention="module")
            encode_text(model, tokens, attention="explicit")
            encode_text(model, tokens, truncate=False)
            assert calls == []
            encode_text(model, tokens)
            assert calls == [1]
    finally:
        fasttext.encode_text_fast = original


# ----------------------------------------------------------------------------------- vision tower
def test_cls_only_last_block_tiny_fp64_with_grads(tiny_clip, tiny_images):
    model = _double(tiny_clip)
    visual = model.visual
    n_layers, width = len(visual.transformer.resblocks), visual.transformer.width
    prompts = _layered(n_layers, 2, width, 4, torch.float64)
    biases = _layered(n_layers, None, width, 5, torch.float64)
    x = tiny_images.double()
    fast = encode_image(model, x, prompts, biases)
    plain = encode_image(model, x, prompts, biases, prune_last=False)
    torch.testing.assert_close(fast, plain, atol=FP64_ATOL, rtol=0)
    w = torch.randn_like(fast)
    for a, b in zip(
        torch.autograd.grad((fast * w).sum(), prompts + biases),
        torch.autograd.grad((plain * w).sum(), prompts + biases),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_cls_only_last_block_vitb16_fp32(vitb16):
    model = vitb16.model
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            encode_image(model, images), model.encode_image(images), atol=FP32_ATOL, rtol=0
        )
        prompts = _layered(12, 2, 768, 6)
        torch.testing.assert_close(
            encode_image(model, images, prompts),
            encode_image(model, images, prompts, attention="module"),
            atol=FP32_ATOL,
            rtol=0,
        )


def test_cls_only_is_skipped_for_average_pooling(tiny_clip, tiny_images):
    model = tiny_clip.model
    model.visual.pool_type = "avg"
    try:
        with torch.no_grad():
            torch.testing.assert_close(
                encode_image(model, tiny_images), model.encode_image(tiny_images), atol=FP32_ATOL, rtol=0
            )
    finally:
        model.visual.pool_type = "tok"


def test_lower_right_mask_pitfall():
    """Documents why the suffix mask is lower-right aligned: is_causal=True is wrong when Lq ≠ Lk."""
    from torch.nn.attention.bias import causal_lower_right

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 4, generator=g) for n in (3, 7, 7))
    right = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 7))
    explicit = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 7, dtype=torch.bool).tril(4))
    wrong = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(right, explicit, atol=1e-6, rtol=0)
    assert (right - wrong).abs().max() > 1e-3


# ------------------------------------------------------------------------ methods (training path)
@pytest.mark.parametrize("kind", ["prompt", "bias"])
def test_training_step_gradients_unchanged(tiny_clip, tiny_images, classnames, kind):
    """Loss and every learnable gradient: defaults (all savings) vs the plain loop, fp64."""
    clip = copy.copy(tiny_clip)
    clip.model = _double(tiny_clip)
    hp = (
        {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 2, "depth_vision": 2}
        if kind == "prompt"
        else {"depth_text": 2, "depth_vision": 2}
    )
    method = build_method(kind, clip, classnames, TEMPLATE, **hp).double()
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = tiny_images.double()
    y = torch.arange(len(x)) % len(classnames)
    model = clip.model

    def loss_and_grads(fast: bool):
        switches = {} if fast else PLAIN
        txt = F.normalize(
            encode_text(
                model,
                method.tokens,
                method.text_prompts(),
                method.text_biases(),
                method.n_ctx_text,
                **switches,
            ),
            dim=-1,
        )
        img = F.normalize(
            encode_image(model, x, method.vision_prompts(), method.vision_biases(), prune_last=fast), dim=-1
        )
        loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y)
        return loss, torch.autograd.grad(loss, list(method.parameters()))

    loss_fast, g_fast = loss_and_grads(True)
    loss_plain, g_plain = loss_and_grads(False)
    torch.testing.assert_close(loss_fast, loss_plain, atol=FP64_ATOL, rtol=0)
    for a, b in zip(g_fast, g_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the method's own API takes the fast path by default and agrees with it
    torch.testing.assert_close(
        method.logits(model, x),
        model.logit_scale.exp()
        * F.normalize(encode_image(model, x, method.vision_prompts(), method.vision_biases()), dim=-1)
        @ method.text_features(model).T,
        atol=FP64_ATOL,
        rtol=0,
    )


def test_text_once_per_evaluation_equals_per_batch(tiny_clip, tiny_images, classnames):
    """d: logits with text features computed once equal logits that re-encode the text per batch."""
    method = build_method(
        "prompt", tiny_clip, classnames, TEMPLATE, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2
    )
    model = tiny_clip.model
    with torch.no_grad():
        once = method.text_features(model)
        a = torch.cat([method.logits(model, tiny_images[i : i + 1], once) for i in range(len(tiny_images))])
        b = torch.cat([method.logits(model, tiny_images[i : i + 1]) for i in range(len(tiny_images))])
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------- start-up
def test_cli_help_lists_commands_without_importing_them():
    """`promptbias --help` uses static one-line help (no torch import); it must match each command."""
    import subprocess
    import sys

    import click

    from promptbias.cli import _COMMANDS, _SHORT_HELP, cli

    assert set(_SHORT_HELP) == set(_COMMANDS)
    ctx = click.Context(cli)
    for name in _COMMANDS:
        command = cli.get_command(ctx, name)
        if command is not None:
            assert _SHORT_HELP[name] == command.get_short_help_str(limit=300), name
    code = "import sys; from promptbias.cli import cli; sys.argv=['promptbias','--help']\n"
    code += "try:\n    cli()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_every_option_of_every_command_says_what_it_does():
    import click

    from promptbias import catalog
    from promptbias.cli import cli

    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"promptbias {name} {param.opts[-1]} has no help text"
    probe_help = cli.get_command(ctx, "probe").get_help(click.Context(cli.get_command(ctx, "probe")))
    for kind, info in catalog.probes().items():
        assert kind in probe_help and info.summary, kind
