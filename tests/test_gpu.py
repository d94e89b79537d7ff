"""CUDA checks of issue 8 (``pytest -m gpu`` on a GPU machine; deselected by ``make test``).

bf16 autocast training step vs fp32, SDPA vs open_clip's MHA on CUDA, the exact savings (buckets, prefix,
EOS/CLS-only last blocks) on CUDA, and that the plain causal text path is flash-eligible.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from promptbias.methods import build_method
from promptbias.model import load_clip
from promptbias.model.encoders import encode_image, encode_text

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PLAIN = {"buckets": 1, "shared_prefix": False, "prune_last": False}
NAMES = [
    "Annual Crop Land",
    "Herbaceous Vegetation Land",
    "banded",
    "2012 Mercedes-Benz Sprinter Extended Cargo Van",
    "707-320",
    "american_pit_bull_terrier",
    "cat",
    "tench",
    "great white shark",
]


@pytest.fixture(scope="module")
def clip_cuda():
    torch.manual_seed(0)
    return load_clip("ViT-B-16-quickgelu", None, device="cuda")


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)).cuda()


def test_sdpa_equals_open_clip_on_cuda(clip_cuda):
    model = clip_cuda.model
    tokens = clip_cuda.tokenizer([f"a photo of a {c}." for c in NAMES]).cuda()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(encode_image(model, x), model.encode_image(x), atol=2e-4, rtol=0)
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens), atol=2e-4, rtol=0)
        torch.testing.assert_close(
            encode_image(model, x, prune_last=False),
            encode_image(model, x, attention="module"),
            atol=2e-4,
            rtol=0,
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prefix_buckets_and_pruning_exact_on_cuda(clip_cuda, dtype):
    model = (
        clip_cuda.model if dtype == torch.float32 else __import__("copy").deepcopy(clip_cuda.model).double()
    )
    tokens = clip_cuda.tokenizer([f"a photo of a {c}." for c in NAMES]).cuda()
    g = torch.Generator().manual_seed(1)
    prompts = [(torch.randn(1, 512, generator=g) * 0.3).to("cuda", dtype).requires_grad_() for _ in range(12)]
    biases = [(torch.randn(512, generator=g) * 0.1).to("cuda", dtype).requires_grad_() for _ in range(12)]
    fast = encode_text(model, tokens, prompts, biases, n_ctx=1)
    plain = encode_text(model, tokens, prompts, biases, n_ctx=1, **PLAIN)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(fast, plain, atol=atol, rtol=0)
    w = torch.randn_like(fast)
    for a, b in zip(
        torch.autograd.grad((fast * w).sum(), prompts + biases),
        torch.autograd.grad((plain * w).sum(), prompts + biases),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=atol * 10, rtol=1e-3 if dtype == torch.float32 else 1e-8)
    x = _images(2).to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_image(model, x), encode_image(model, x, prune_last=False), atol=atol, rtol=0
        )


@pytest.mark.parametrize("kind", ["prompt", "bias"])
def test_bf16_training_step_close_to_fp32(clip_cuda, kind):
    """One SGD step under bf16 autocast: finite, and the updated state close to the fp32 step's."""
    hp = {"n_ctx_text": 1, "n_ctx_vision": 1} if kind == "prompt" else {}
    x = _images(8)
    y = torch.arange(8, device="cuda") % len(NAMES)
    states = {}
    losses = {}
    for precision in ("fp32", "bf16"):
        method = build_method(kind, clip_cuda, NAMES, "a photo of a {}.", **hp)
        if kind == "bias":
            with torch.no_grad():
                for p in method.parameters():
                    p.normal_(0, 0.02, generator=torch.Generator("cuda").manual_seed(0))
        opt = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast("cuda", enabled=False)
        )
        with ctx:
            loss = F.cross_entropy(method.logits(clip_cuda.model, x).float(), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
        opt.step()
        losses[precision] = loss.item()
        states[precision] = {k: v.detach().clone() for k, v in method.state_dict().items()}
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * max(1.0, abs(losses["fp32"]))
    for k, v in states["fp32"].items():
        assert torch.isfinite(states["bf16"][k]).all()
        scale = v.abs().max().clamp(min=1e-3)
        assert (states["bf16"][k] - v).abs().max() / scale < 0.05, k


def test_causal_text_path_is_flash_eligible():
    """The truncated causal text blocks use is_causal (no additive mask): flash must accept them in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(100, 8, 18, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # raises if flash cannot run it
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


def test_whole_text_tower_runs_under_flash_only(clip_cuda):
    """Plain truncated path (buckets=1, no prefix) in bf16 with only the flash kernel allowed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tokens = clip_cuda.tokenizer([f"a photo of a {c}." for c in NAMES]).cuda()
    with (
        torch.no_grad(),
        torch.autocast("cuda", dtype=torch.bfloat16),
        sdpa_kernel([SDPBackend.FLASH_ATTENTION]),
    ):
        feats = encode_text(clip_cuda.model, tokens, buckets=4, shared_prefix=False, prune_last=False)
        img = encode_image(clip_cuda.model, _images(2), prune_last=False)
    assert torch.isfinite(feats).all() and torch.isfinite(img).all()
