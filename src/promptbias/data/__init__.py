"""Datasets: registry, fetch, CoOp-compatible few-shot splits and image loading (the demo world: promptbias.demo).

    from promptbias.data import registry, splits, images
    registry.get("dtd").template                       # "{} texture."
    split = splits.load_split("data", "dtd")           # data/raw/dtd.json
    x, y = images.load_eval_images("data", "dtd", split["test"], 224)

Submodules are imported on demand (``images`` pulls in torch), so import the one you need.
"""
