"""Bias tuning (the paper §3.4): one learnable vector per block per branch, added to every token.

"We add an independent learnable embedding and repeat it to add to all tokens after each transformer
layer of the image and language branch." Zero-initialised, so step 0 equals zero-shot CLIP with the
caption "a photo of a {class}.". ``depth_text`` / ``depth_vision`` choose how many blocks (from the
first) get a bias; 0 switches a branch off. On ViT-B/16 with depth 12: 12·(512+768) = 15,360 params.
"""

from __future__ import annotations

import torch
from torch import nn

from promptbias.methods.base import Method, check_depth, clean_classname, layer_list, register_method
from promptbias.model.encoders import Layered
from promptbias.model.loading import LoadedClip


@register_method
class BiasTuning(Method):
    kind = "bias"

    def __init__(
        self,
        clip: LoadedClip,
        classnames: list[str],
        template: str,
        depth_text: int = 12,
        depth_vision: int = 12,
    ) -> None:
        super().__init__(clip, classnames, template, depth_text=depth_text, depth_vision=depth_vision)
        check_depth(depth_text, self.text_layers, "methods.bias.depth_text", clip.name)
        check_depth(depth_vision, self.vision_layers, "methods.bias.depth_vision", clip.name)
        self._tokenize(clip)
        self.text_bias = nn.ParameterDict(
            {str(i): nn.Parameter(torch.zeros(self.text_width)) for i in range(depth_text)}
        )
        self.vision_bias = nn.ParameterDict(
            {str(i): nn.Parameter(torch.zeros(self.vision_width)) for i in range(depth_vision)}
        )
        self.to(clip.device)

    def captions(self, classnames: list[str]) -> list[str]:
        return [f"a photo of a {clean_classname(c)}." for c in classnames]

    def text_biases(self) -> Layered:
        return layer_list(self.text_bias, self.text_layers)

    def vision_biases(self) -> Layered:
        return layer_list(self.vision_bias, self.vision_layers)
