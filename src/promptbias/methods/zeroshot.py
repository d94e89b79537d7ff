"""Zero-shot CLIP: one hand-crafted template per dataset, no learnable tensors."""

from __future__ import annotations

from promptbias.methods.base import Method, clean_classname, register_method
from promptbias.model.loading import LoadedClip


@register_method
class ZeroShot(Method):
    kind = "zeroshot"

    def __init__(self, clip: LoadedClip, classnames: list[str], template: str, **hparams) -> None:
        super().__init__(clip, classnames, template, **hparams)
        self._tokenize(clip)

    def captions(self, classnames: list[str]) -> list[str]:
        return [self.template.format(clean_classname(c)) for c in classnames]
