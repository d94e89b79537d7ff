"""``promptbias pretrain-demo``: contrastive pretraining of the tiny demo CLIP on the demo world.

    promptbias --params params.yaml --params config/demo.yaml pretrain-demo
    promptbias --set demo.pretrain_steps=20 pretrain-demo          # a smoke run

The demo CLIP (open_clip config ``promptbias-demo``, random init) is trained CLIP-style on
:func:`promptbias.demo.world.caption_corpus` — symmetric InfoNCE over a batch of image–caption pairs,
learnable temperature (``logit_scale`` clamped to ≤ ln 100), AdamW with linear warm-up and cosine
decay, light augmentation (random flip + shift), fp32 on CPU. Deterministic from the seed for a
given thread count. Text is run over the context truncated to the corpus' longest caption (exact:
the mask is causal), which makes the text tower ~2× cheaper.

Outputs (in ``demo.clip_dir``, atomically):

* ``open_clip_model.safetensors`` — the full open_clip ``state_dict``, so that
  ``load_clip("promptbias-demo", "<clip_dir>/open_clip_model.safetensors")`` (open_clip's own loader)
  reads it like any other weights file;
* ``pretrain.json`` — loss per step, wall time, images/s, seed, corpus size, settings, and measured
  right after training with the reloaded weights: zero-shot top-1 on each demo dataset's test split
  (dataset template) and a 16-shot linear probe on frozen image features (predicts tuning gains).

Keys read from ``cfg["demo"]`` (every one is set in params.yaml, with its meaning; config/demo.yaml
overrides some): world_seed, pretrain_seed, model, clip_dir, pretrain_steps, batch_size, lr,
weight_decay, warmup_steps, corpus_size (null → steps × batch), texture_batch_share (share of batches,
reached half-way by a linear ramp, made of background-only pairs: hard negatives that differ in
texture alone), eval_datasets, probe_shots, pretrain_threads.

Threads: ``torch.set_num_threads(demo.pretrain_threads)`` — fixed by the config, never taken from the
engine (Snakemake's OMP_NUM_THREADS), since the result depends on it.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F

from promptbias import paths
from promptbias.config import RunContext
from promptbias.errors import UserError
from promptbias.interrupts import interruptible
from promptbias.io import atomic_path, fault_point, provenance, write_json
from promptbias.settings import DemoSettings, Settings

MAX_LOGIT_SCALE = math.log(100.0)


def demo_settings(cfg: dict[str, Any]) -> DemoSettings:
    """The ``demo`` section as pretraining reads it (corpus_size filled in)."""
    settings = Settings.of(cfg).demo
    if settings.corpus_size < settings.batch_size:
        raise UserError(
            f"demo.corpus_size: {settings.corpus_size} is smaller than demo.batch_size — raise it"
        )
    return settings


# ------------------------------------------------------------------------------------- model pieces
def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` over a context truncated to ``tokens.shape[1]`` (exact: causal mask). → B×E."""
    length = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # B×L×D
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])  # B×L×D
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]  # B×D (EOS has the largest id)
    return pooled @ model.text_projection  # B×E


def tokenize_truncated(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Tokenize and cut the padding after the longest EOS. → LongTensor N×L."""
    tokens = tokenizer(texts)  # N×context
    length = int(tokens.argmax(dim=-1).max()) + 1
    return tokens[:, :length]


def _augment(images: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Light augmentation: per-sample horizontal flip + random shift (reflect pad, crop). B×3×S×S → same."""
    b, _, s, _ = images.shape
    flip = torch.rand(b, generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (shift, shift, shift, shift), mode="reflect")  # B×3×(S+2p)×(S+2p)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(s)[None, :])[:, None, :, None].expand(b, 3, s, s + 2 * shift)
    out = padded.gather(2, rows)  # B×3×S×(S+2p)
    cols = (dx[:, None] + torch.arange(s)[None, :])[:, None, None, :].expand(b, 3, s, s)
    return out.gather(3, cols)  # B×3×S×S


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ training
def pretrain(
    settings: DemoSettings, show_progress: bool | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain the demo CLIP; returns the trained model (eval mode) and the training record.
    ``show_progress=False`` hides the progress (a bar on a terminal, periodic lines in a log)."""
    from promptbias.demo.world import background_only, caption_corpus
    from promptbias.model import load_clip
    from promptbias.progress import track

    torch.set_num_threads(int(settings.pretrain_threads))
    threads = torch.get_num_threads()
    torch.manual_seed(settings.pretrain_seed)
    clip = load_clip(settings.model, None)
    model = clip.model.train().requires_grad_(True)
    size = clip.image_size
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)

    t0 = time.perf_counter()
    images_np, captions = caption_corpus(settings.world_seed, settings.corpus_size, size)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous()  # N×3×S×S uint8
    tokens = tokenize_truncated(clip.tokenizer, captions)  # N×L
    corpus_s = time.perf_counter() - t0

    steps, batch, n = settings.pretrain_steps, settings.batch_size, len(captions)
    opt = torch.optim.AdamW(
        _param_groups(model, settings.weight_decay),
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True,  # one kernel over all tensors: the 49,408-row token embedding made the step 20% optimiser
    )
    gen = torch.Generator().manual_seed(settings.pretrain_seed)
    order = torch.randperm(n, generator=gen)
    bare = torch.from_numpy(background_only(captions)).nonzero().flatten()  # background-only pairs
    cursor, losses, lrs = 0, [], []
    t1 = time.perf_counter()
    bar = track(range(steps), desc="pretrain demo CLIP", unit="step", enabled=show_progress is not False)
    for step in bar:
        fault_point(f"{settings.clip_dir}/pretrain.step{step + 1}.")  # tests: hold or kill at a step
        # texture batches phase in over the first half: colour and objects are learned first
        share = settings.texture_batch_share * min(1.0, 2 * step / steps)
        if float(torch.rand(1, generator=gen)) < share and len(bare) >= batch:
            idx = bare[torch.randperm(len(bare), generator=gen)[:batch]]  # negatives differ in texture only
        else:
            if cursor + batch > n:  # next pass over the corpus: reshuffle, drop the partial batch
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + batch]
            cursor += batch
        lr = _lr_at(step, steps, settings.lr, settings.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        x = _augment(images[idx].float() / 255.0, gen)  # B×3×S×S in [0, 1]
        x = (x - mean) / std
        img = F.normalize(model.encode_image(x), dim=-1)  # B×E
        txt = F.normalize(encode_text_truncated(model, tokens[idx]), dim=-1)  # B×E
        logits = model.logit_scale.exp() * img @ txt.T  # B×B
        target = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        if not math.isfinite(loss.item()):
            raise UserError(f"demo pretraining diverged at step {step} (loss {loss.item()}) — lower demo.lr")
        losses.append(round(loss.item(), 5))
        lrs.append(lr)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
    train_s = time.perf_counter() - t1
    model.eval().requires_grad_(False)
    record = {
        "steps": steps,
        "batch_size": batch,
        "corpus_size": n,
        "text_context_used": int(tokens.shape[1]),
        "threads": threads,
        "corpus_seconds": round(corpus_s, 2),
        "train_seconds": round(train_s, 2),
        "images_per_second": round(steps * batch / train_s, 1),
        "loss": losses,
        "lr": lrs,
        "logit_scale": round(float(model.logit_scale.exp()), 3),
        "example_captions": captions[:5],
    }
    return model, record


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The full open_clip state_dict as safetensors (open_clip's loader reads it), written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))


# ---------------------------------------------------------------------------------------- evaluation
def _load_items(root: Path, items: list[list[Any]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test transform (resize short side bicubic + centre crop) → uint8 N×3×S×S, labels N."""
    from PIL import Image

    out = np.empty((len(items), size, size, 3), dtype=np.uint8)  # N×S×S×3
    for i, (rel, _, _) in enumerate(items):
        with Image.open(root / rel) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            out[i] = np.asarray(im.crop((left, top, left + size, top + size)))
    labels = torch.tensor([int(it[1]) for it in items])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels


@torch.no_grad()
def _image_features(clip: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    from promptbias.data.images import normalize

    feats = [
        F.normalize(clip.model.encode_image(normalize(images[i : i + batch], clip.mean, clip.std)), dim=-1)
        for i in range(0, len(images), batch)
    ]
    return torch.cat(feats)  # N×E


def _linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, n_classes: int, seed: int
) -> torch.Tensor:
    """Multinomial logistic regression on frozen L2-normalised features. → predicted labels of test_x."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train_x.shape[1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=0.05, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(300):
            loss = F.cross_entropy(head(train_x * 10), train_y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head(test_x * 10).argmax(-1)


@torch.no_grad()
def evaluate_demo(clip: Any, settings: DemoSettings) -> dict[str, Any]:
    """Zero-shot (dataset template) and 16-shot linear-probe top-1 (%) on each demo dataset's test split."""
    import json
    import random

    from promptbias.demo.world import DEMO_DATASETS, generate_dataset

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="promptbias-demo-eval-") as tmp:
        for name in settings.eval_datasets:
            if name not in DEMO_DATASETS:
                raise UserError(
                    f"demo.eval_datasets: {name!r} is not a demo dataset ({', '.join(DEMO_DATASETS)})"
                )
            spec = DEMO_DATASETS[name]
            root = Path(tmp) / name
            generate_dataset(name, root, settings.world_seed)
            split = json.loads((root / f"split_{name}.json").read_text())
            test_x, test_y = _load_items(root, split["test"], clip.image_size)
            test_f = _image_features(clip, test_x)  # N×E
            prompts = [spec.template.format(c) for c in spec.classnames]
            text_f = F.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1)  # C×E
            zs = (test_f @ text_f.T).argmax(-1)
            # CoOp-style few-shot subset of the train split (seed 1)
            rnd, by_class = random.Random(1), {}
            for item in split["train"]:
                by_class.setdefault(item[1], []).append(item)
            shots = [
                it
                for c in sorted(by_class)
                for it in rnd.sample(by_class[c], min(settings.probe_shots, len(by_class[c])))
            ]
            train_x, train_y = _load_items(root, shots, clip.image_size)
            probe = _linear_probe(
                _image_features(clip, train_x), train_y, test_f, len(spec.classnames), seed=0
            )
            per_class_zs = [
                round(100 * float((zs[test_y == c] == c).float().mean()), 1)
                for c in range(len(spec.classnames))
            ]
            results[name] = {
                "n_classes": len(spec.classnames),
                "n_test": len(test_y),
                "chance": round(100 / len(spec.classnames), 2),
                "template": spec.template,
                "zeroshot_accuracy": round(100 * float((zs == test_y).float().mean()), 2),
                f"linear_probe_{settings.probe_shots}shot_accuracy": round(
                    100 * float((probe == test_y).float().mean()), 2
                ),
                "zeroshot_per_class": dict(zip(spec.classnames, per_class_zs, strict=True)),
            }
    return results


@click.command("pretrain-demo")
@click.pass_obj
def pretrain_demo(ctx: RunContext) -> None:
    """Pretrain the demo CLIP on the demo world's caption corpus (CPU, a few minutes)."""
    from promptbias.pipeline.bind import bind_job

    job = bind_job(ctx, ctx.config, "pretrain-demo")
    settings = demo_settings(ctx.config)
    with interruptible():  # a Ctrl-C ends it even inside loss.backward() (outputs are atomic)
        _pretrain_demo(job, settings)


def _pretrain_demo(job: Any, settings: DemoSettings) -> None:
    from promptbias.model import load_clip

    out_dir = Path(settings.clip_dir)
    t0 = time.perf_counter()
    model, record = pretrain(settings)
    weights = paths.demo_weights(out_dir)
    save_weights(model, weights)
    clip = load_clip(settings.model, str(weights))  # proves the file loads through the real loader
    t_eval = time.perf_counter()
    record["evaluation"] = evaluate_demo(clip, settings)
    record["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
    record["wall_seconds"] = round(time.perf_counter() - t0, 2)
    record = {
        "model": settings.model,
        "weights": str(weights),
        "settings": dataclasses.asdict(settings),
        **record,
    }
    record.update(job.record())
    record["provenance"] = provenance()
    write_json(paths.demo_record(out_dir), record)
    summary = ", ".join(
        f"{k} zero-shot {v['zeroshot_accuracy']:.1f}%" for k, v in record["evaluation"].items()
    )
    click.echo(
        f"pretrained {settings.model} in {record['wall_seconds']:.0f}s "
        f"({record['images_per_second']:.0f} img/s, loss {record['loss'][0]:.2f} → {record['loss'][-1]:.2f}); "
        f"{summary} → {weights}"
    )
