"""What training really does to the learnable tensors, measured from outside the training code.

* Every optimizer step is recorded through torch's global optimizer hooks (parameters and gradients
  before, parameters after) and replayed against an independent statement of the paper's recipe: SGD
  with momentum and weight decay, one warm-up epoch at 1e-5, then a cosine schedule stepped per epoch.
  So the learning rate *applied* in each epoch is checked, not the one written to train.json.
* Training changes every learnable tensor of both towers (none is left out of the graph or the optimizer).
* Where biases and prompts act in both towers is checked against open_clip's own forward with hooks:
  a bias is added to a block's output, a vision prompt is appended after ln_pre and replaced at a
  block's input, a text prompt replaces the context tokens before the positional embedding (block 0)
  or at a block's input (deeper blocks).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from promptbias import train
from promptbias.io import write_json
from promptbias.methods import build_method
from tests.workspace import Workspace, strict_json

EPOCHS, LR, WARMUP_LR = 3, 0.01, 1e-5  # tests/workspace.py's tiny settings
BATCH = 6  # does not divide the 4-shot train set: the last partial batch must be dropped
MOMENTUM, WEIGHT_DECAY = 0.8, 0.05  # not the defaults: a hard-coded value in the code cannot pass
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace.create(tmp_path_factory.mktemp("dyn") / "base", datasets=["demo_shapes"])


def paper_lr(epoch: int) -> float:
    """The recipe's learning rate of a 0-based epoch, stated here independently of promptbias.train."""
    if epoch == 0:
        return WARMUP_LR
    return LR * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / EPOCHS))


@contextlib.contextmanager
def recorded_steps(monkeypatch) -> Iterator[dict]:
    """Record the method built by training, its initial tensors and every optimizer step."""
    seen: dict = {"steps": [], "method": None, "initial": None}
    build = train._build

    def spy_build(*args, **kwargs):
        method, optimizer, schedule = build(*args, **kwargs)
        seen["method"] = method
        seen["initial"] = {k: v.detach().clone() for k, v in method.named_parameters()}
        return method, optimizer, schedule

    monkeypatch.setattr(train, "_build", spy_build)
    pending: list = []

    def before(optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        pending[:] = [(p, p.detach().double().clone(), p.grad.detach().double().clone()) for p in params]

    def after(optimizer, args, kwargs):
        seen["steps"].append([(p, p0, g, p.detach().double().clone()) for p, p0, g in pending])

    handles = [
        register_optimizer_step_pre_hook(before),
        register_optimizer_step_post_hook(after),
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _train(ws: Workspace, method: str, monkeypatch) -> tuple[dict, dict]:
    with recorded_steps(monkeypatch) as seen:
        ws.cli(
            "--set", f"train.momentum={MOMENTUM}", "--set", f"train.weight_decay={WEIGHT_DECAY}",
            "--set", f"train.batch_size={BATCH}",
            "train", "--dataset", "demo_shapes", "--method", method, "--seed", "1",
        )  # fmt: skip
    record = json.loads((ws.path / f"runs/demo_shapes/{method}/seed1/train.json").read_text())
    return seen, record


@pytest.mark.parametrize("method", ["bias", "prompt"])
def test_every_step_applies_the_recipes_sgd_update_at_the_epochs_learning_rate(
    workspace, tmp_path, monkeypatch, method
):
    ws = workspace.copy(tmp_path / "ws")
    seen, record = _train(ws, method, monkeypatch)
    assert record["train_images"] % BATCH != 0
    per_epoch = record["train_images"] // BATCH  # the last partial batch is dropped
    assert per_epoch >= 2 and len(seen["steps"]) == EPOCHS * per_epoch
    buffers: dict[int, torch.Tensor] = {}
    for step, params in enumerate(seen["steps"]):
        lr = paper_lr(step // per_epoch)
        for p, p0, grad, p1 in params:
            d_p = grad + WEIGHT_DECAY * p0
            buf = buffers[id(p)] = d_p if id(p) not in buffers else MOMENTUM * buffers[id(p)] + d_p
            # fp32 parameters: the update is exact up to rounding of the stored values
            atol = 4 * torch.finfo(torch.float32).eps * float(p0.abs().max().clamp(min=1e-3))
            where = f"step {step} (lr {lr:g})"
            torch.testing.assert_close(
                p1 - p0, -lr * buf, rtol=1e-4, atol=atol, msg=lambda m, w=where: f"{w}: {m}"
            )
    assert [h["lr"] for h in record["history"]] == [
        pytest.approx(paper_lr(e), rel=1e-12) for e in range(EPOCHS)
    ]


@pytest.mark.parametrize("method", ["bias", "prompt"])
def test_training_changes_every_learnable_tensor_of_both_towers(workspace, tmp_path, monkeypatch, method):
    from safetensors.torch import load_file

    ws = workspace.copy(tmp_path / "ws")
    seen, _ = _train(ws, method, monkeypatch)
    saved = load_file(str(ws.path / f"runs/demo_shapes/{method}/seed1/params.safetensors"))
    initial = seen["initial"]
    assert saved.keys() == initial.keys()
    assert any(k.startswith("text_") for k in saved) and any(k.startswith("vision_") for k in saved)
    unchanged = sorted(k for k in saved if torch.equal(saved[k], initial[k]))
    assert not unchanged, f"training left these tensors at their initial values: {unchanged}"


# -- an independent reference for where biases and prompts act: open_clip's forward plus hooks ------


@contextlib.contextmanager
def hooked(model: torch.nn.Module, method) -> Iterator[None]:
    """Make open_clip's own encode_image / encode_text apply ``method``'s prompts and biases."""
    visual, text_blocks = model.visual, model.transformer.resblocks
    assert visual.transformer.batch_first and model.transformer.batch_first  # B×T×W everywhere
    vision_prompts, vision_biases = list(method.vision_prompts()), list(method.vision_biases())
    text_prompts, text_biases = list(method.text_prompts()), list(method.text_biases())
    n_ctx = method.n_ctx_text
    handles = []

    def add(bias):
        return lambda module, args, out: out + bias  # after the block, to every token

    def replace_tail(prompt):  # the last P tokens of a block's input are the vision prompts
        return lambda module, args: (
            torch.cat([args[0][:, : -prompt.shape[0]], prompt.expand(args[0].shape[0], -1, -1)], 1),
            *args[1:],
        )

    def replace_context(prompt):  # positions 1..n_ctx, right after SOS
        def swap(x):
            return torch.cat([x[:, :1], prompt.expand(x.shape[0], -1, -1), x[:, 1 + n_ctx :]], 1)

        return swap

    if vision_prompts and vision_prompts[0] is not None:
        first = visual.ln_pre(vision_prompts[0])  # computed before the hook: the hook must not recurse
        handles.append(
            visual.ln_pre.register_forward_hook(
                lambda module, args, out: torch.cat([out, first.expand(out.shape[0], -1, -1)], 1)
            )
        )
    for layer, prompt in enumerate(vision_prompts):
        if layer > 0 and prompt is not None:
            handles.append(
                visual.transformer.resblocks[layer].register_forward_pre_hook(replace_tail(prompt))
            )
    for layer, prompt in enumerate(text_prompts):
        if prompt is None:
            continue
        swap = replace_context(prompt)
        if layer == 0:  # before the positional embedding is added
            handles.append(
                model.token_embedding.register_forward_hook(lambda m, a, out, swap=swap: swap(out))
            )
        else:
            handles.append(
                text_blocks[layer].register_forward_pre_hook(lambda m, a, swap=swap: (swap(a[0]), *a[1:]))
            )
    for blocks, biases in ((visual.transformer.resblocks, vision_biases), (text_blocks, text_biases)):
        for layer, bias in enumerate(biases):
            if bias is not None:
                handles.append(blocks[layer].register_forward_hook(add(bias)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize(
    ("kind", "hparams"),
    [
        ("bias", dict(depth_text=1, depth_vision=1)),
        ("bias", dict(depth_text=2, depth_vision=2)),
        ("bias", dict(depth_text=0, depth_vision=2)),
        ("prompt", dict(n_ctx_text=2, n_ctx_vision=2, depth_text=1, depth_vision=1)),
        ("prompt", dict(n_ctx_text=2, n_ctx_vision=3, depth_text=2, depth_vision=2)),
        ("prompt", dict(n_ctx_text=6, n_ctx_vision=1, depth_text=2, depth_vision=1, ctx_init=None)),
    ],
)
def test_biases_and_prompts_act_where_open_clip_with_hooks_puts_them(
    tiny_clip, tiny_images, classnames, kind, hparams
):
    model = tiny_clip.model
    method = build_method(kind, tiny_clip, classnames, TEMPLATE, **hparams)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in method.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)  # biases start at zero: make every tensor count
        img, txt = method.image_features(model, tiny_images), method.text_features(model)
        with hooked(model, method):
            ref_img = F.normalize(model.encode_image(tiny_images), dim=-1)
            ref_txt = F.normalize(model.encode_text(method.tokens), dim=-1)
        plain_img = F.normalize(model.encode_image(tiny_images), dim=-1)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=0)
    assert (img - plain_img).abs().max() > 1e-3  # the learnables really move the features


def test_metrics_json_is_strict_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"ci95": float("nan"), "loss": [1.0, float("inf")], "t": torch.tensor([2.0, -math.inf])})
    assert strict_json(path) == {"ci95": None, "loss": [1.0, None], "t": [2.0, None]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
