"""A toy method and a toy probe added from outside promptbias: one module, one registration each.

    PROMPTBIAS_PLUGINS=tests.toy_plugin promptbias … train --method toyshift …

``toyshift``: one learnable vector added to the image tower's output of its first ``depth_vision``
blocks (a bias on the vision side only). ``toy_norms``: the mean norm of the method's image features.
"""

from __future__ import annotations

import torch
from torch import nn

from promptbias import catalog
from promptbias.methods.base import Method, clean_classname, layer_list, register_method
from promptbias.probes.common import Accumulator, ProbeContext, ProbeResult
from promptbias.probes.registry import register_probe


@register_method
class ToyShift(Method):
    kind = "toyshift"

    def __init__(self, clip, classnames: list[str], template: str, depth_vision: int = 1) -> None:
        super().__init__(clip, classnames, template, depth_vision=depth_vision)
        self._tokenize(clip)
        self.shift = nn.ParameterDict(
            {str(i): nn.Parameter(torch.zeros(self.vision_width)) for i in range(depth_vision)}
        )
        self.to(clip.device)

    def captions(self, classnames: list[str]) -> list[str]:
        return [f"a photo of a {clean_classname(c)}." for c in classnames]

    def vision_biases(self):
        return layer_list(self.shift, self.vision_layers)


catalog.register_method_info(
    catalog.MethodInfo(
        "toyshift",
        __name__,
        trains=True,
        schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["lr", "depth_vision"],
            "properties": {"lr": {"type": "number"}, "depth_vision": {"type": "integer", "minimum": 1}},
        },
    )
)


@register_probe("toy_norms")
def toy_norms(ctx: ProbeContext) -> ProbeResult:
    acc = Accumulator()
    for batch in ctx.batches():
        with torch.no_grad():
            feats = ctx.method.image_features(ctx.model, batch.images, attention="explicit")  # B×E
        acc.add("vision", "all", "feature_norm", -1, -1, float(feats.norm(dim=-1).sum()), len(feats))
    return ProbeResult(acc, {"what": "mean L2 norm of the normalised image features (1 by construction)"})


catalog.register_probe_info(catalog.ProbeInfo("toy_norms", __name__))
