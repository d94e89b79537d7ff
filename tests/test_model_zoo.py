"""Other backbones: every open_clip zoo model is either run block by block or refused in one line, from its config.

Refusals must come before ``open_clip.create_model`` (which builds the model and downloads a tagged checkpoint)
and before ``get_tokenizer`` (which may fetch an HF tokenizer): both are replaced by tripwires here.
Supported families are judged from their configs; only two small ones are built and run.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from promptbias.errors import UserError
from promptbias.methods import build_method
from promptbias.model import load_clip
from promptbias.model.encoders import check_model, encode_image, encode_text
from promptbias.model.loading import CUSTOM_BLOCK_KEYS, register_shipped_configs

register_shipped_configs()
ZOO = sorted(open_clip.list_models())

# Plain open_clip ViT CLIPs (quickgelu / higher-res / LayerScale variants included): run block by block.
SUPPORTED = [
    "ViT-B-32", "ViT-B-32-256", "ViT-B-32-plus-256", "ViT-B-32-quickgelu",
    "ViT-B-16", "ViT-B-16-plus", "ViT-B-16-plus-240", "ViT-B-16-quickgelu",
    "ViT-L-14", "ViT-L-14-280", "ViT-L-14-336", "ViT-L-14-336-quickgelu", "ViT-L-14-quickgelu",
    "ViT-L-16", "ViT-L-16-320",
    "ViT-H-14", "ViT-H-14-378", "ViT-H-14-378-quickgelu", "ViT-H-14-quickgelu", "ViT-H-16",
    "ViT-g-14", "ViT-bigG-14", "ViT-bigG-14-quickgelu", "ViT-e-14",
    "ViT-M-16", "ViT-M-16-alt", "ViT-M-32", "ViT-M-32-alt",
    "ViT-S-16", "ViT-S-16-alt", "ViT-S-32", "ViT-S-32-alt",
    "promptbias-tiny", "promptbias-demo",
]  # fmt: skip

_COCA = "a CoCa captioning decoder"
_HF_TEXT = "a Hugging Face text tower"
_HF_TOKENIZER = "a Hugging Face tokenizer"
_RESNET = "a ModifiedResNet image tower"
_TIMM = "a timm image tower"

COCA = ["coca_base", "coca_roberta-ViT-B-32", "coca_ViT-B-32", "coca_ViT-L-14"]
HF_TEXT = [
    "nllb-clip-base", "nllb-clip-large", "roberta-ViT-B-32", "mt5-base-ViT-B-32", "mt5-xl-ViT-H-14",
    "xlm-roberta-base-ViT-B-32", "xlm-roberta-large-ViT-H-14",
]  # fmt: skip
# the 13 CLIPA and "worldwide" ViTs: open_clip ViTs whose tokenizer needs `transformers` and a download
HF_TOKENIZER = [
    "ViT-L-14-CLIPA", "ViT-L-14-CLIPA-336", "ViT-H-14-CLIPA", "ViT-H-14-CLIPA-336", "ViT-bigG-14-CLIPA",
    "ViT-bigG-14-CLIPA-336", "ViT-L-14-worldwide", "ViT-L-14-worldwide-quickgelu", "ViT-H-14-worldwide",
    "ViT-H-14-worldwide-378", "ViT-H-14-worldwide-quickgelu", "ViT-bigG-14-worldwide", "ViT-bigG-14-worldwide-378",
]  # fmt: skip
RESNET = [n for n in ZOO if n.startswith("RN")]
# timm image towers: ConvNeXt, EVA, MobileCLIP, PE-Core, SigLIP(2) (nllb-*-siglip too), Swin, ViTamin, timm ViTs
TIMM_PREFIXES = ("convnext", "EVA", "MobileCLIP", "PE-Core", "ViTamin", "swin", "vit_", "nllb-clip-")
TIMM = [n for n in ZOO if "SigLIP" in n or (n.startswith(TIMM_PREFIXES) and n not in HF_TEXT)]
REFUSED: dict[str, str] = {
    **dict.fromkeys(COCA, _COCA),
    **dict.fromkeys(HF_TEXT, _HF_TEXT),
    **dict.fromkeys(HF_TOKENIZER, _HF_TOKENIZER),
    **dict.fromkeys(RESNET, _RESNET),
    **dict.fromkeys(TIMM, _TIMM),
}


class Tripwire(Exception):
    """Raised by the stand-ins of create_model / get_tokenizer / download_pretrained."""


@pytest.fixture
def tripwires(monkeypatch) -> list[str]:
    """Replace everything that builds a model or fetches files; record what was reached."""
    calls: list[str] = []

    def trip(what: str):
        def fn(*args, **kwargs):
            calls.append(what)
            raise Tripwire(what)

        return fn

    monkeypatch.setattr(open_clip, "create_model", trip("create_model"))
    monkeypatch.setattr(open_clip, "get_tokenizer", trip("get_tokenizer"))
    monkeypatch.setattr(open_clip.factory, "download_pretrained", trip("download_pretrained"))
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", trip("download_pretrained_from_hf"))
    return calls


def test_zoo_lists_are_real_open_clip_models():
    assert not set(SUPPORTED) & set(REFUSED)
    assert set(SUPPORTED) <= set(ZOO)
    assert set(REFUSED) <= set(ZOO)
    assert len([n for n in REFUSED if "CLIPA" in n or "worldwide" in n]) == 13


@pytest.mark.parametrize("name", ZOO)
def test_zoo_verdict_comes_from_the_config_before_any_build_or_download(name, tripwires):
    tags = open_clip.list_pretrained_tags_by_model(name)
    pretrained = tags[0] if tags else None  # with a tag, create_model would download the weights first
    try:
        load_clip(name, pretrained)
        pytest.fail("load_clip returned although create_model is a tripwire")
    except Tripwire:
        refusal = None  # passed every check and went on to build the model
    except UserError as err:
        refusal = str(err)
    if name in SUPPORTED:
        assert refusal is None and tripwires == ["create_model"]
        return
    if name in REFUSED:
        assert refusal is not None and REFUSED[name] in refusal
    if refusal is None:  # a zoo model newer than these lists that passes: it reached create_model
        assert tripwires == ["create_model"]
        return
    assert "\n" not in refusal and refusal.startswith(f"model.name: {name} has ")
    assert refusal.endswith(
        "which promptbias does not support — pick a CLIP ViT model "
        "with open_clip's own text tower (e.g. ViT-B-16-quickgelu, ViT-L-14)"
    )
    assert tripwires == []  # nothing was built, downloaded or tokenised


@pytest.mark.parametrize("name", ["ViT-S-32-alt", "ViT-M-16-alt"])  # the smallest; -alt M/16 has LayerScale
def test_small_supported_zoo_vits_match_open_clip_and_run_a_method(name, classnames):
    torch.manual_seed(0)
    clip = load_clip(name, None)
    check_model(clip.model)  # the built model agrees with the config verdict
    model = clip.model
    images = torch.randn(2, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    tokens = clip.tokenizer([f"a photo of a {c}." for c in classnames])
    with torch.no_grad():
        ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
        for attention in ("sdpa", "explicit"):
            torch.testing.assert_close(
                encode_image(model, images, attention=attention), ref_img, atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                encode_text(model, tokens, attention=attention), ref_txt, atol=1e-5, rtol=0
            )
        method = build_method("prompt", clip, classnames, "a photo of a {}.", depth_text=2, depth_vision=2)
        assert method.logits(model, images).shape == (2, len(classnames))


def _custom_config(
    monkeypatch, name: str, vision: dict | None = None, text: dict | None = None, **top
) -> str:
    """Register promptbias-tiny with extra vision_cfg/text_cfg/top-level keys under a new name (for this test)."""
    cfg = open_clip.get_model_config("promptbias-tiny")
    cfg["vision_cfg"].update(vision or {})
    cfg["text_cfg"].update(text or {})
    cfg.update(top)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)
    return name


@pytest.mark.parametrize("tower", ["vision_cfg", "text_cfg"])
@pytest.mark.parametrize("key", CUSTOM_BLOCK_KEYS)
def test_custom_attention_blocks_are_refused_from_the_config(monkeypatch, tripwires, tower, key):
    extra = {key: True}
    name = _custom_config(
        monkeypatch,
        f"promptbias-tiny-{tower[:-4]}-{key}",
        vision=extra if tower == "vision_cfg" else None,
        text=extra if tower == "text_cfg" else None,
    )
    with pytest.raises(UserError, match=rf"has custom transformer blocks \({tower}: {key}\)") as err:
        load_clip(name, None)
    assert "\n" not in str(err.value) and tripwires == []


@pytest.mark.parametrize(
    ("vision", "text", "what"),
    [
        (
            {"attentional_pool": True},
            {},
            r"an attentional-pooling image tower \(vision_cfg.attentional_pool\)",
        ),
        ({}, {"embed_cls": True}, r"a text CLS embedding \(text_cfg.embed_cls, CoCa-style\)"),
        ({}, {"pool_type": "none"}, "text pool type 'none'"),
    ],
)
def test_other_unsupported_tower_options_are_refused_from_the_config(
    monkeypatch, tripwires, vision, text, what
):
    name = _custom_config(
        monkeypatch, f"promptbias-tiny-{'-'.join([*vision, *text])}", vision=vision, text=text
    )
    with pytest.raises(UserError, match=f"has {what}, which promptbias does not support") as err:
        load_clip(name, None)
    assert "\n" not in str(err.value) and tripwires == []


def test_qk_norm_model_built_outside_load_clip_is_refused_by_every_fast_path(monkeypatch):
    """A q/k-norm block (CustomResidualAttentionBlock) is right only on the module path: the others refuse it."""
    name = _custom_config(
        monkeypatch, "promptbias-tiny-qknorm", vision={"qk_norm": True}, text={"qk_norm": True}
    )
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat.", "a dog."])
    with torch.no_grad():
        for attention in ("sdpa", "explicit"):
            with pytest.raises(TypeError, match="unsupported transformer block CustomResidualAttentionBlock"):
                encode_image(model, images, attention=attention)
            with pytest.raises(TypeError, match="unsupported transformer block CustomResidualAttentionBlock"):
                encode_text(model, tokens, attention=attention)


def test_text_padding_mask_is_refused(monkeypatch, tripwires):
    """A bidirectional text tower that masks padding: the block loop has no pad mask, so refuse it."""
    name = _custom_config(
        monkeypatch,
        "promptbias-tiny-padmask",
        text={"no_causal_mask": True, "use_pad_mask": True},
        custom_text=True,
    )
    with pytest.raises(
        UserError, match=r"padding attention mask in the text tower \(text_cfg.use_pad_mask\)"
    ):
        load_clip(name, None)
    assert tripwires == []
    # open_clip 3.x builds no such tower from a config (CLIPTextCfg lacks the key); set the flag on a built one
    custom = _custom_config(
        monkeypatch, "promptbias-tiny-bidir", text={"no_causal_mask": True}, custom_text=True
    )
    model = open_clip.factory.create_model(custom, pretrained=None).eval()  # the real one, past the tripwire
    model.text.use_pad_mask = True
    with pytest.raises(TypeError, match="padding attention mask"):
        encode_text(model, torch.ones(1, 77, dtype=torch.long))


def test_logit_bias_is_added_to_method_logits(monkeypatch, classnames):
    name = _custom_config(monkeypatch, "promptbias-tiny-logitbias", init_logit_bias=-3.0)
    torch.manual_seed(0)
    clip = load_clip(name, None)
    model = clip.model
    assert float(model.logit_bias) == -3.0
    images = torch.randn(2, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))
    method = build_method("bias", clip, classnames, "a photo of a {}.", depth_text=2, depth_vision=2)
    with torch.no_grad():
        ours = method.logits(model, images)
        image_logits, _ = model.get_logits(images, method.tokens)  # open_clip: scale·cos + logit_bias
    torch.testing.assert_close(ours, image_logits, atol=1e-4, rtol=0)
