"""CLIP via open_clip: loading, block-by-block encoders with prompts and biases, attention capture.

Nothing here knows about datasets or files other than model weights.
"""

from promptbias.model.loading import LoadedClip, load_clip, resolve_device

__all__ = ["LoadedClip", "load_clip", "resolve_device"]
