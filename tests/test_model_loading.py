"""Loading open_clip models: shipped configs, local weights files, custom text towers, clear errors."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from promptbias.errors import UserError
from promptbias.model import load_clip
from promptbias.model.encoders import encode_image, encode_text
from promptbias.model.loading import SHIPPED_CONFIGS


def test_shipped_configs_are_registered():
    assert {"promptbias-tiny", "promptbias-demo"} <= set(SHIPPED_CONFIGS)
    clip = load_clip("promptbias-tiny", None)
    assert clip.image_size == 32 and len(clip.model.visual.transformer.resblocks) == 2
    assert not any(p.requires_grad for p in clip.model.parameters())  # frozen, logit_scale included
    assert clip.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_local_weights_file_round_trip(tmp_path, tiny_clip, tiny_images):
    from safetensors.torch import save_file

    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, str(path))
    reloaded = load_clip("promptbias-tiny", str(path))
    with torch.no_grad():
        assert torch.equal(
            reloaded.model.encode_image(tiny_images), tiny_clip.model.encode_image(tiny_images)
        )


def test_wrong_architecture_weights_is_a_user_error(tmp_path, tiny_clip):
    path = tmp_path / "w.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    with pytest.raises(UserError, match="does not match the architecture of promptbias-demo"):
        load_clip("promptbias-demo", str(path))


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        ("no-such-model", None, "unknown open_clip model 'no-such-model'"),
        ("promptbias-tiny", "laion9000", "not a pretrained tag of promptbias-tiny"),
        (
            "promptbias-tiny",
            "/nonexistent/weights.safetensors",
            "weights file '/nonexistent/weights.safetensors' not found",
        ),
        ("RN50", None, "RN50 has a ModifiedResNet image tower, which promptbias does not support"),
    ],
)
def test_bad_model_choices_fail_with_one_line(name, pretrained, message):
    with pytest.raises(UserError, match=message) as err:
        load_clip(name, pretrained)
    assert "\n" not in str(err.value)


def test_openai_tag_is_known_for_the_default_backbone():
    assert "openai" in open_clip.list_pretrained_tags_by_model("ViT-B-16-quickgelu")


def test_custom_text_clip_works(tmp_path, tiny_images):
    cfg = json.loads((open_clip.factory._MODEL_CONFIG_PATHS[-1] / "promptbias-tiny.json").read_text())
    cfg["custom_text"] = True
    (tmp_path / "promptbias-tiny-customtext.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "promptbias-tiny-customtext.json")
    clip = load_clip("promptbias-tiny-customtext", None)
    assert hasattr(clip.model, "text")
    tokens = clip.tokenizer(["a photo of a cat.", "a photo of a dog."])
    with torch.no_grad():
        torch.testing.assert_close(
            encode_text(clip.model, tokens), clip.model.encode_text(tokens), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            encode_image(clip.model, tiny_images), clip.model.encode_image(tiny_images), atol=1e-5, rtol=0
        )


def test_cuda_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.fail("this test documents CPU-only behaviour; run GPU tests with -m gpu")
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        load_clip("promptbias-tiny", None, device="cuda")
