"""Independent deep multi-modal prompts (IVLP), exactly as DESIGN.md §3.

Text: the caption is "a photo of a {class}."; the first ``n_ctx_text`` word positions after SOS are
learnable. With ``ctx_init`` set and n_ctx_text ≤ its token count they start as those words'
embeddings (the remaining init words stay fixed); otherwise they start N(0, 0.02²) and the caption is
"X X … X {class}." so EOS stays at argmax. Blocks 1..depth_text−1 overwrite those positions at their
input with their own N(0, 0.02²) vectors (no positional embedding).

Vision: ``n_ctx_vision`` tokens appended after CLS+patches (through ln_pre), replaced at the input of
blocks 1..depth_vision−1; only CLS is pooled.

Parameter-matched setting (Table 1 PROMPT): 1+1 tokens, depth 12 on ViT-B/16 = 12·(512+768) = 15,360.
"""

from __future__ import annotations

import torch
from torch import nn

from promptbias.methods.base import (
    Method,
    check_depth,
    clean_classname,
    layer_list,
    normal_init,
    register_method,
)
from promptbias.model.encoders import Layered, TextParts
from promptbias.model.loading import LoadedClip


@register_method
class DeepPrompts(Method):
    kind = "prompt"

    def __init__(
        self,
        clip: LoadedClip,
        classnames: list[str],
        template: str,
        n_ctx_text: int = 1,
        n_ctx_vision: int = 1,
        depth_text: int = 12,
        depth_vision: int = 12,
        ctx_init: str | None = "a photo of a",
        init_seed: int = 0,
    ) -> None:
        super().__init__(
            clip,
            classnames,
            template,
            n_ctx_text=n_ctx_text,
            n_ctx_vision=n_ctx_vision,
            depth_text=depth_text,
            depth_vision=depth_vision,
            ctx_init=ctx_init,
            init_seed=init_seed,
        )
        check_depth(depth_text, self.text_layers, "methods.prompt.depth_text", clip.name)
        check_depth(depth_vision, self.vision_layers, "methods.prompt.depth_vision", clip.name)
        self.n_ctx_text = n_ctx_text if depth_text > 0 else 0
        self.n_ctx_vision = n_ctx_vision if depth_vision > 0 else 0
        gen = torch.Generator().manual_seed(init_seed)
        self._init_words = self._init_word_ids(clip, ctx_init)
        self._tokenize(clip)

        self.text_ctx = nn.ParameterDict()
        if self.n_ctx_text:
            if self._init_words is not None:
                ids = self._init_words[: self.n_ctx_text]
                emb = TextParts.of(clip.model).token_embedding.weight[ids].detach().clone().float().cpu()
                self.text_ctx["0"] = nn.Parameter(emb)  # n_ctx×W, from "a photo of a"
            else:
                self.text_ctx["0"] = normal_init(self.n_ctx_text, self.text_width, generator=gen)
            for layer in range(1, depth_text):
                self.text_ctx[str(layer)] = normal_init(self.n_ctx_text, self.text_width, generator=gen)
        self.vision_ctx = nn.ParameterDict()
        if self.n_ctx_vision:
            for layer in range(depth_vision):
                self.vision_ctx[str(layer)] = normal_init(self.n_ctx_vision, self.vision_width, generator=gen)
        self.to(clip.device)

    def _init_word_ids(self, clip: LoadedClip, ctx_init: str | None) -> list[int] | None:
        """Token ids of the init words when they can initialise all n_ctx_text slots, else None."""
        n = self.hparams["n_ctx_text"]
        if not ctx_init or n == 0 or n > 4:
            return None
        ids = clip.tokenizer([ctx_init])[0]
        eos = int(ids.argmax())  # CLIP tokenizer: EOT has the largest id (HF ones are refused at load)
        words = ids[1:eos].tolist()
        return words if n <= len(words) else None

    def captions(self, classnames: list[str]) -> list[str]:
        ctx_init = self.hparams["ctx_init"] or "a photo of a"
        if self.n_ctx_text and self._init_words is None:
            prefix = " ".join(["X"] * self.n_ctx_text)
            return [f"{prefix} {clean_classname(c)}." for c in classnames]
        return [f"{ctx_init} {clean_classname(c)}." for c in classnames]

    def text_prompts(self) -> Layered:
        return layer_list(self.text_ctx, self.text_layers) if self.n_ctx_text else ()

    def vision_prompts(self) -> Layered:
        return layer_list(self.vision_ctx, self.vision_layers) if self.n_ctx_vision else ()
