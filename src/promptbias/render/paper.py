"""The paper's published numbers (Table 1, §3.4) and how our dataset names map to its rows.

    PAPER_TABLE1["eurosat"]["BIAS"]   # 86.5
    display_name("oxford_flowers")    # "OxfordFlowers"
    display_name("imagenet_sketch")   # "ImageNet-Sketch"

Demo datasets have no published values (no entry in ``PAPER_TABLE1``). Other papers' values for the
generalisation protocols (CoCoOp, MaPLe) are in :mod:`promptbias.render.published`.
"""

from __future__ import annotations

from promptbias.data import registry
from promptbias.render.published import imagenet_variant

# Dataset name -> the paper's row label (Table 1).
PAPER_ROWS: dict[str, str] = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101",
    "oxford_flowers": "OxfordFlowers",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "sun397": "SUN397",
    "ucf101": "UCF101",
}

COLUMNS = ("CLIP", "PROMPT", "BIAS", "OPTIMAL")

# Table 1 of the paper: top-1 accuracy (%), 16 shots, ViT-B/16.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "imagenet": {"CLIP": 66.7, "PROMPT": 72.5, "BIAS": 71.9, "OPTIMAL": 73.1},
    "caltech101": {"CLIP": 93.3, "PROMPT": 95.2, "BIAS": 96.0, "OPTIMAL": 95.2},
    "dtd": {"CLIP": 44.1, "PROMPT": 68.8, "BIAS": 69.6, "OPTIMAL": 70.5},
    "eurosat": {"CLIP": 48.4, "PROMPT": 71.7, "BIAS": 86.5, "OPTIMAL": 82.6},
    "fgvc_aircraft": {"CLIP": 24.9, "PROMPT": 37.7, "BIAS": 41.0, "OPTIMAL": 40.9},
    "food101": {"CLIP": 85.9, "PROMPT": 87.3, "BIAS": 86.0, "OPTIMAL": 87.1},
    "oxford_flowers": {"CLIP": 70.7, "PROMPT": 94.7, "BIAS": 94.7, "OPTIMAL": 96.5},
    "oxford_pets": {"CLIP": 89.1, "PROMPT": 93.6, "BIAS": 92.7, "OPTIMAL": 93.1},
    "stanford_cars": {"CLIP": 65.6, "PROMPT": 76.6, "BIAS": 77.7, "OPTIMAL": 80.5},
    "sun397": {"CLIP": 62.6, "PROMPT": 75.3, "BIAS": 74.7, "OPTIMAL": 76.2},
    "ucf101": {"CLIP": 67.5, "PROMPT": 82.1, "BIAS": 83.5, "OPTIMAL": 84.2},
}
PAPER_AVERAGE: dict[str, float] = {"CLIP": 65.3, "PROMPT": 77.8, "BIAS": 79.5, "OPTIMAL": 80.0}


def display_name(dataset: str) -> str:
    """The paper's spelling for real datasets (and the ImageNet variants); demo_shapes -> 'Demo shapes'."""
    if dataset in PAPER_ROWS:
        return PAPER_ROWS[dataset]
    if variant := imagenet_variant(dataset):
        return registry.get(variant).display_name
    return dataset.replace("_", " ").capitalize()
