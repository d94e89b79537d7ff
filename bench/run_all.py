"""All performance benchmarks of issue 8 in one run: promptbias vs the naive (reference-style) baseline.

    .venv/bin/python bench/run_all.py                                  # CPU, fp32, a few minutes (make bench)
    .venv/bin/python bench/run_all.py --device cuda --out $OUT/bench_gpu.md     # H100: bf16 autocast, B=32
    .venv/bin/python bench/run_all.py --classes 10,100 --batch 4 --steps 2    # quicker

Sections (markdown, printed and written to ``--out``):
1. environment and the FLOP floor rate (CPU: measured fp32 GEMM; GPU: 400 TFLOP/s);
2. exactness: max |Δ| of every saving against the plain / open_clip reference (fp32, fp64);
3. per-saving gains: text tower fwd+bwd (a1, a2, a3, a4), image tower (a4), evaluation (d);
4. training step, prompt and bias, at each class count: naive vs promptbias, images/s, memory, × floor;
5. evaluation images/s at 100 classes (zero-shot and prompt): naive vs promptbias.
Timings are medians over ``--steps`` round-robin repeats after one warm-up, ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf_lib as pl
from promptbias.model.encoders import encode_image, encode_text


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def section_exactness(bench: pl.Bench, n_classes: int, n_fp64: int) -> list[str]:
    """Max |Δ| of each saving vs the plain reference, fp32 (ViT-B-16) and fp64."""
    lines = [
        "## Exactness (max |Δ| vs reference; features unnormalised, scale ≈ 1–10)",
        "",
        "| saving | fp32 max abs diff | fp64 max abs diff |",
        "|---|---|---|",
    ]
    model32 = bench.model
    model64 = copy.deepcopy(model32).double()
    results: dict[str, list[str]] = {}
    for dtype, model, nc in ((torch.float32, model32, n_classes), (torch.float64, model64, n_fp64)):
        clip = copy.copy(bench.clip)
        clip.model = model
        sub = pl.Bench(clip=clip, device=bench.device, bf16=False)
        method = sub.method("prompt", nc).to(dtype)
        with torch.no_grad():
            for p in method.parameters():
                p.normal_(0, 0.3)
        prompts, biases = method.text_prompts(), method.text_biases()
        g = torch.Generator().manual_seed(1)
        biases = [
            torch.randn(model.transformer.width, generator=g).to(bench.device, dtype) * 0.1
            for _ in range(len(model.transformer.resblocks))
        ]
        tok = method.tokens
        with torch.no_grad():
            full = encode_text(model, tok, prompts, biases, 1, truncate=False, attention="module")
            plain = encode_text(
                model, tok, prompts, biases, 1, buckets=1, shared_prefix=False, prune_last=False
            )
            variants = {
                "a1 truncate to longest EOS (vs 77 tokens, open_clip MHA)": (plain, full),
                "a2 length buckets (vs a1)": (
                    encode_text(
                        model, tok, prompts, biases, 1, buckets=4, shared_prefix=False, prune_last=False
                    ),
                    plain,
                ),
                "a3 shared prefix (vs a1)": (
                    encode_text(
                        model, tok, prompts, biases, 1, buckets=1, shared_prefix=True, prune_last=False
                    ),
                    plain,
                ),
                "a4 EOS-only last text block (vs a1)": (
                    encode_text(
                        model, tok, prompts, biases, 1, buckets=1, shared_prefix=False, prune_last=True
                    ),
                    plain,
                ),
                "a1–a4 text, all on (default; vs 77 tokens)": (
                    encode_text(model, tok, prompts, biases, 1),
                    full,
                ),
            }
            x = sub.images(2).to(dtype)
            vp = method.vision_prompts()
            img_ref = encode_image(model, x, vp, attention="module")
            variants["a4 CLS-only last image block (vs open_clip MHA)"] = (
                encode_image(model, x, vp),
                img_ref,
            )
            zs = sub.method("zeroshot", nc)
            variants["zero-shot text, all on (vs model.encode_text)"] = (
                encode_text(model, zs.tokens),
                model.encode_text(zs.tokens),
            )
        for name, (a, b) in variants.items():
            results.setdefault(name, []).append(f"{(a - b).abs().max().item():.1e}")
    for name, diffs in results.items():
        lines.append(f"| {name} | {diffs[0]} | {diffs[1]} |")
    lines.append("")
    lines.append(
        f"fp32 on {n_classes} classes, fp64 on {n_fp64} classes (ImageNet names, IVLP prompts N(0,0.3²) in all 12 "
        "layers, text biases N(0,0.1²)). Gradient equality (fp64) is asserted in tests/test_perf_exactness.py."
    )
    return lines


def section_text_ablation(bench: pl.Bench, n_classes: int, repeats: int) -> list[str]:
    method = bench.method("prompt", n_classes)
    prompts, biases, tok = method.text_prompts(), method.text_biases(), method.tokens
    model = bench.model
    variants = {
        "naive: 77 tokens, open_clip MHA": dict(truncate=False, attention="module"),
        "a1 truncate (SDPA)": dict(buckets=1, shared_prefix=False, prune_last=False),
        "a1+a2 buckets": dict(buckets=4, shared_prefix=False, prune_last=False),
        "a1+a3 prefix": dict(buckets=1, shared_prefix=True, prune_last=False),
        "a1+a2+a3": dict(buckets=4, shared_prefix=True, prune_last=False),
        "a1–a4 (default)": dict(),
    }

    def make(kw):
        def fn():
            with bench.autocast():
                out = encode_text(model, tok, prompts, biases, 1, **kw)
            out.float().square().sum().backward()

        return fn

    times = pl.interleaved_times({k: make(v) for k, v in variants.items()}, bench.device, repeats)
    fast_rows, full_rows = bench.text_tokens(method)
    trunc_rows = bench.text_tokens(method, buckets=1, shared_prefix=False)[0]
    base = _med(times["naive: 77 tokens, open_clip MHA"])
    a1 = _med(times["a1 truncate (SDPA)"])
    lines = [
        f"### Text tower, fwd+bwd, {n_classes} class prompts (IVLP 1 ctx × 12 layers)",
        "",
        f"Token rows per layer: 77-token {full_rows}, a1 {trunc_rows}, a1+a2+a3 {fast_rows}.",
        "",
        "| variant | ms (median) | × vs naive | × vs a1 |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        m = _med(ts)
        lines.append(f"| {name} | {m * 1e3:,.0f} | {base / m:.2f} | {a1 / m:.2f} |")
    return lines


def section_image_ablation(bench: pl.Bench, batch: int, repeats: int) -> list[str]:
    method = bench.method("prompt", 10)
    x = bench.images(batch)
    model = bench.model
    vp = method.vision_prompts()

    def make(**kw):
        def fn():
            with bench.autocast():
                out = encode_image(model, x, vp, **kw)
            out.float().square().sum().backward()

        return fn

    times = pl.interleaved_times(
        {
            "open_clip MHA blocks": make(attention="module"),
            "SDPA blocks": make(prune_last=False),
            "SDPA + a4 CLS-only last block (default)": make(),
        },
        bench.device,
        repeats,
    )
    base = _med(times["open_clip MHA blocks"])
    lines = [
        f"### Image tower, fwd+bwd, batch {batch} (IVLP 1 vision token × 12 layers)",
        "",
        "| variant | ms (median) | × vs MHA |",
        "|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {_med(ts) * 1e3:,.0f} | {base / _med(ts):.2f} |")
    return lines


def section_training(
    bench: pl.Bench, classes: list[int], batch: int, repeats: int, naive_max: int, floor_tflops: float
) -> tuple[list[str], dict]:
    lines = [
        f"## Training step (batch {batch}; forward + cross-entropy + backward + SGD)",
        "",
        "| method | classes | naive ms | promptbias ms | speed-up | naive img/s | promptbias img/s | "
        "memory naive → promptbias (MiB) | step GFLOP naive → pb | achieved TFLOP/s (pb) | pb × floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    mem_kind = "peak CUDA" if bench.device.type == "cuda" else "saved activations"
    for kind in ("prompt", "bias"):
        for c in classes:
            fns = {}
            fast, method = bench.train_step_fn(kind, c, batch, naive=False)
            fns["pb"] = fast
            run_naive = c <= naive_max
            if run_naive:
                naive, _ = bench.train_step_fn(kind, c, batch, naive=True)
                fns["naive"] = naive
            mem = {}
            for name, fn in fns.items():
                if bench.device.type == "cuda":
                    mem[name] = pl.peak_memory_mib(fn, bench.device)
                else:
                    mem[name] = pl.saved_activation_mib(fn.forward)
            times = pl.interleaved_times(fns, bench.device, repeats)
            t_pb = _med(times["pb"])
            t_nv = _med(times["naive"]) if run_naive else None
            gf_pb = bench.step_gflop(method, batch, naive=False)
            gf_nv = bench.step_gflop(method, batch, naive=True)
            floor = gf_pb / 1e3 / floor_tflops
            speed = t_nv / t_pb if t_nv else None
            summary[(kind, c)] = {
                "pb": t_pb,
                "naive": t_nv,
                "speedup": speed,
                "mem": mem,
                "floor_x": t_pb / floor,
            }
            lines.append(
                f"| {kind} | {c} | {_fmt(t_nv and t_nv * 1e3, 0)} | {t_pb * 1e3:,.0f} | "
                f"{_fmt(speed, 2)}{'' if run_naive else ' (naive skipped)'} | "
                f"{_fmt(t_nv and batch / t_nv, 2)} | {batch / t_pb:,.2f} | "
                f"{_fmt(mem.get('naive'), 0)} → {_fmt(mem['pb'], 0)} | {gf_nv:,.0f} → {gf_pb:,.0f} | "
                f"{gf_pb / 1e3 / t_pb:.3f} | {t_pb / floor:.2f} |"
            )
            del fns, fast, method
    lines += [
        "",
        f"Memory column: {mem_kind}. FLOPs from the performance.md model (image 35.1 GF + 0.185/prompt token, "
        "text 5.96 GF per prompt at 77 tokens ∝ token rows, step = 2.05× forward); the floor is promptbias's own "
        f"step FLOPs at {floor_tflops:g} TFLOP/s (a4 savings not deducted, so the floor is slightly generous).",
    ]
    return lines, summary


def section_eval(
    bench: pl.Bench, n_classes: int, batch: int, n_images: int, repeats: int
) -> tuple[list[str], dict]:
    images = bench.images(n_images, seed=3)
    lines = [
        f"## Evaluation ({n_classes} classes, {n_images} images, batch {batch}; images already decoded)",
        "",
        "| method | naive img/s | d only: text once, else naive | promptbias img/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for kind in ("zeroshot", "prompt"):
        naive = bench.eval_fn(kind, n_classes, images, batch, naive=True)
        fast = bench.eval_fn(kind, n_classes, images, batch, naive=False)
        method = bench.method(kind, n_classes)

        @torch.no_grad()
        def d_only(method=method):
            with bench.autocast():
                t = bench.text(method, naive=True)
                return torch.cat(
                    [
                        (bench.image(method, images[s : s + batch], naive=True) @ t.T).argmax(-1)
                        for s in range(0, n_images, batch)
                    ]
                )

        assert torch.equal(naive(), d_only()) or bench.bf16
        agree = (naive() == fast()).float().mean().item()
        times = pl.interleaved_times({"naive": naive, "d": d_only, "pb": fast}, bench.device, repeats)
        ips = {k: n_images / _med(v) for k, v in times.items()}
        summary[kind] = ips["pb"] / ips["naive"]
        lines.append(
            f"| {kind} | {ips['naive']:,.2f} | {ips['d']:,.2f} | {ips['pb']:,.2f} | {ips['pb'] / ips['naive']:.2f} "
            f"(predictions agree {100 * agree:.0f}%) |"
        )
    lines += [
        "",
        "The reference re-encodes all class prompts for every test batch (IVLP `forward`); zero-shot naive is "
        "`model.encode_text` per batch + `model.encode_image`. The gain shrinks with larger eval batches "
        "(text cost is per batch): at batch 100 and 100 classes the FLOP model gives 1.25×, at 1000 classes 2.7×.",
    ]
    return lines, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="training batch (CPU 8, CUDA 32)")
    ap.add_argument("--eval-batch", type=int, default=None, help="evaluation batch (CPU 8, CUDA 100)")
    ap.add_argument("--steps", type=int, default=None, help="timed repeats per variant (CPU 3, CUDA 10)")
    ap.add_argument("--classes", default="10,100,1000")
    ap.add_argument(
        "--naive-max-classes", type=int, default=None, help="skip the naive step above this (CPU 100)"
    )
    ap.add_argument("--no-bf16", action="store_true", help="CUDA: run fp32 (TF32) instead of bf16 autocast")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: exact,text,image,train,eval")
    ap.add_argument("--model", default="ViT-B-16-quickgelu", help="open_clip model (random init)")
    ap.add_argument("--out", default=None, help="markdown output file (default: print only)")
    args = ap.parse_args(argv)

    cuda = args.device.startswith("cuda")
    batch = args.batch or (32 if cuda else 4)
    eval_batch = args.eval_batch or (100 if cuda else 4)
    repeats = args.steps or (10 if cuda else 2)
    naive_max = args.naive_max_classes if args.naive_max_classes is not None else (10_000 if cuda else 100)
    classes = [int(c) for c in args.classes.split(",") if c]
    skip = set(args.skip.split(","))

    t_start = time.perf_counter()
    bench = pl.Bench.create(args.device, bf16=None if not args.no_bf16 else False, model=args.model)
    env = pl.environment(bench.device)
    if cuda:
        floor = pl.GPU_FLOOR_TFLOPS
        floor_note = f"{floor:g} TFLOP/s (issue 8's GPU floor)"
        gemm = pl.gemm_tflops(bench.device, torch.bfloat16 if bench.bf16 else torch.float32, n=8192)
    else:
        gemm = pl.gemm_tflops(bench.device, torch.float32)
        floor = gemm
        floor_note = f"{floor * 1e3:,.0f} GFLOP/s (measured fp32 GEMM 2048², this run)"
    lines = [
        f"# promptbias performance — {env['device']}",
        "",
        *(f"- {k}: {v}" for k, v in env.items()),
        f"- precision: {'bf16 autocast' if bench.bf16 else 'fp32'}; naive and promptbias alike",
        f"- GEMM rate: {gemm:.3f} TFLOP/s; floor rate: {floor_note}",
        f"- batch {batch}, eval batch {eval_batch}, {repeats} timed repeats (median, round-robin), classes {classes}",
        "",
    ]
    print("\n".join(lines), flush=True)

    def emit(block: list[str]) -> None:
        print("\n".join(block) + "\n", flush=True)
        lines.extend([*block, ""])
        if args.out:  # written after every section: a timed-out run still leaves its results
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text("\n".join(lines) + "\n")

    if "exact" not in skip:
        emit(section_exactness(bench, 100, 30))
    if "text" not in skip:
        emit(["## Per-saving gains", ""])
        for c in [100] + ([1000] if cuda else []):
            emit(section_text_ablation(bench, c, repeats))
    if "image" not in skip:
        emit(section_image_ablation(bench, batch, repeats))
    summary_train, summary_eval = {}, {}
    if "train" not in skip:
        block, summary_train = section_training(bench, classes, batch, repeats, naive_max, floor)
        emit(block)
    if "eval" not in skip:
        block, summary_eval = section_eval(
            bench, 100, eval_batch, 2 * eval_batch if not cuda else 1000, repeats
        )
        emit(block)

    verdict = ["## Targets", ""]
    if ("prompt", 100) in summary_train and summary_train[("prompt", 100)]["speedup"]:
        for kind in ("prompt", "bias"):
            s = summary_train[(kind, 100)]["speedup"]
            verdict.append(
                f"- {kind} training step at 100 classes: {s:.2f}× faster than naive (target ≥ 2.5× on CPU)"
            )
    for kind, s in summary_eval.items():
        verdict.append(f"- {kind} evaluation at 100 classes: {s:.2f}× faster than naive (target ≥ 2× on CPU)")
    if cuda:
        for key, label in ((("prompt", 1000), "ImageNet-size"), (("prompt", 10), "EuroSAT-size")):
            if key in summary_train:
                r = summary_train[key]
                mem = r["mem"]["pb"]
                verdict.append(
                    f"- {label} prompt step: {r['pb'] * 1e3:.1f} ms, {r['floor_x']:.2f}× the 400 TFLOP/s floor "
                    f"(target ≤ 2×); peak memory {mem / 1024:.2f} GiB (ImageNet target < 16 GB)"
                )
    verdict.append(
        f"- peak RSS of this process: {pl.max_rss_mib():,.0f} MiB; total bench time {time.perf_counter() - t_start:.0f} s"
    )
    emit(verdict)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
