"""Shared pieces of the performance benchmarks (issue 8): FLOP model, timing, memory, the two encoders.

    from perf_lib import Bench
    bench = Bench.create("cpu")                          # random-init ViT-B-16-quickgelu, fp32 on CPU
    fast = bench.train_step_fn("prompt", 100, batch=8, naive=False)
    seconds = median_time(fast, repeats=3)

"naive" is the reference's approach: open_clip's own attention modules (``nn.MultiheadAttention`` with
the float causal mask), the full 77-token context, every token through every block, text re-encoded for
every batch (evaluation) — zero-shot uses ``model.encode_text``/``model.encode_image`` themselves.
"promptbias" is the default code path: SDPA blocks, context truncated to the longest EOS (a1), length
buckets (a2), the shared prefix (a3), CLS/EOS-only last blocks (a4), text features once per evaluation (d).
On CUDA both run under bf16 autocast (the reference runs fp16); on CPU both run in fp32.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from promptbias.methods import build_method
from promptbias.model import load_clip
from promptbias.model.encoders import TextParts, encode_image, encode_text, eos_positions
from promptbias.model.fasttext import plan_text

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init

# ---------------------------------------------------------------- FLOP model (reference/performance.md)
IMAGE_GF = 35.1  # ViT-B/16 forward per image, 197 tokens
IMAGE_GF_PER_PROMPT = 0.185  # per extra (vision prompt) token
TEXT_GF_77 = 5.96  # text tower forward per class prompt at 77 tokens, ∝ tokens
STEP_OVER_FWD = 2.05  # frozen-weight backward ≈ 1.05× forward
GPU_FLOOR_TFLOPS = 400.0
TEMPLATE = "a photo of a {}."
PROMPT_HP = {"n_ctx_text": 1, "n_ctx_vision": 1, "depth_text": 12, "depth_vision": 12}  # Table 1 PROMPT
BIAS_HP = {"depth_text": 12, "depth_vision": 12}


def text_gf(tokens_total: float) -> float:
    """Forward GFLOP of the text tower for a total number of token rows per layer."""
    return TEXT_GF_77 * tokens_total / 77.0


def image_gf(batch: int, vision_prompts: int) -> float:
    return batch * (IMAGE_GF + IMAGE_GF_PER_PROMPT * vision_prompts)


def classnames(n: int) -> list[str]:
    """n ImageNet class names spread over the list (real token-length spread; includes long names)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    step = max(1, len(names) // n)
    return [names[i * step] for i in range(n)]


def gemm_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul rate (TFLOP/s): the CPU floor's reference rate."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[1:]) / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def interleaved_times(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Round-robin timing (noise on a shared machine hits every variant alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            out[name].append(time.perf_counter() - t0)
    return out


def saved_activation_mib(fn: Callable[[], Any]) -> float:
    """MiB of distinct tensors autograd saves for backward during ``fn()`` (device-independent)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """CUDA: torch.cuda.max_memory_allocated during ``fn()``; CPU: None (see saved_activation_mib)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment(device: torch.device) -> dict[str, str]:
    import open_clip

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} logical CPUs, threads={torch.get_num_threads()}",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        info["device"] = "CPU"
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# ------------------------------------------------------------------------------- the benchmark model
@dataclass
class Bench:
    clip: Any
    device: torch.device
    bf16: bool

    @classmethod
    def create(cls, device: str, bf16: bool | None = None, model: str = "ViT-B-16-quickgelu") -> Bench:
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(0)
        clip = load_clip(model, None, device=dev)
        return cls(clip=clip, device=dev, bf16=(dev.type == "cuda") if bf16 is None else bf16)

    @property
    def model(self) -> torch.nn.Module:
        return self.clip.model

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def method(self, kind: str, n_classes: int):
        hp = dict(PROMPT_HP if kind == "prompt" else BIAS_HP if kind == "bias" else {})
        layers = min(len(self.model.visual.transformer.resblocks), len(self.model.transformer.resblocks))
        hp.update({k: min(v, layers) for k, v in hp.items() if k.startswith("depth")})
        names = classnames(n_classes)
        template = TEMPLATE
        m = build_method(kind, self.clip, names, template, **hp)
        if kind == "bias":  # non-zero biases: a realistic mid-training state
            with torch.no_grad():
                for p in m.parameters():
                    p.normal_(0, 0.02)
        return m

    def images(self, batch: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        size = self.clip.image_size
        return torch.randn(batch, 3, size, size, generator=g).to(self.device)  # normalised-scale noise

    # -- features ------------------------------------------------------------------------------
    def text(self, method, naive: bool, **switches) -> torch.Tensor:
        if naive:
            if method.kind == "zeroshot":
                feats = self.model.encode_text(method.tokens)  # open_clip itself, 77 tokens
            else:
                feats = encode_text(
                    self.model,
                    method.tokens,
                    method.text_prompts(),
                    method.text_biases(),
                    method.n_ctx_text,
                    truncate=False,
                    attention="module",
                )
        else:
            feats = encode_text(
                self.model,
                method.tokens,
                method.text_prompts(),
                method.text_biases(),
                method.n_ctx_text,
                **switches,
            )
        return F.normalize(feats, dim=-1)

    def image(self, method, x: torch.Tensor, naive: bool, prune_last: bool = True) -> torch.Tensor:
        if naive:
            if method.kind == "zeroshot":
                feats = self.model.encode_image(x)
            else:
                feats = encode_image(
                    self.model, x, method.vision_prompts(), method.vision_biases(), attention="module"
                )
        else:
            feats = encode_image(
                self.model, x, method.vision_prompts(), method.vision_biases(), prune_last=prune_last
            )
        return F.normalize(feats, dim=-1)

    # -- workloads ------------------------------------------------------------------------------
    def train_step_fn(
        self, kind: str, n_classes: int, batch: int, naive: bool
    ) -> tuple[Callable[[], float], Any]:
        """One SGD step (forward, cross-entropy, backward, update) of ``kind`` on C classes."""
        method = self.method(kind, n_classes)
        params = [p for p in method.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=5e-4)
        x = self.images(batch)
        y = (torch.arange(batch) % n_classes).to(self.device)
        scale = self.model.logit_scale.exp()

        def forward() -> torch.Tensor:
            with self.autocast():
                txt = self.text(method, naive)
                img = self.image(method, x, naive)
                return F.cross_entropy((scale * img @ txt.to(img.dtype).T).float(), y)

        def step() -> torch.Tensor:
            loss = forward()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        step.forward = forward  # type: ignore[attr-defined]
        return step, method

    def eval_fn(
        self, kind: str, n_classes: int, images: torch.Tensor, batch: int, naive: bool
    ) -> Callable[[], Any]:
        """Predict every image in ``images`` in batches; naive re-encodes the text for every batch (d)."""
        method = self.method(kind, n_classes)

        @torch.no_grad()
        def run() -> torch.Tensor:
            preds = []
            with self.autocast():
                txt = None if naive else self.text(method, naive=False)
                for start in range(0, len(images), batch):
                    x = images[start : start + batch]
                    t = self.text(method, naive=True) if naive else txt
                    img = self.image(method, x, naive)
                    preds.append((img @ t.to(img.dtype).T).argmax(-1))
            return torch.cat(preds)

        return run

    def text_tokens(self, method, **switches) -> tuple[int, int]:
        """(token rows per layer on the fast path, rows at 77 tokens) for the FLOP model."""
        parts = TextParts.of(self.model)
        eos = eos_positions(method.tokens, parts)
        plan = plan_text(
            method.tokens,
            eos,
            method.n_ctx_text,
            switches.get("buckets", 4),
            switches.get("shared_prefix", True),
        )
        return plan.tokens_per_layer(), method.tokens.shape[0] * method.tokens.shape[1]

    def step_gflop(self, method, batch: int, naive: bool) -> float:
        """FLOP-model GFLOP of one training step of ``method`` (the work each variant actually does)."""
        fast_rows, full_rows = self.text_tokens(method)
        v = method.n_ctx_vision if method.kind == "prompt" else 0
        return STEP_OVER_FWD * (image_gf(batch, v) + text_gf(full_rows if naive else fast_rows))
