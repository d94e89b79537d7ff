"""The dataset registry: the 11 paper datasets + the demo world, templates, sources, manual hints."""

from __future__ import annotations

import re

import pytest
import yaml

from promptbias.config import params_schema
from promptbias.data import registry
from promptbias.errors import UserError

TEMPLATES = {  # CoOp's CUSTOM_TEMPLATES (reference/methods-and-data.md §6)
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
}


def test_registry_covers_the_schema_datasets() -> None:
    enum = params_schema()["$defs"]["dataset_name"]["enum"]
    assert set(registry.names()) == set(enum)
    assert set(registry.PAPER_DATASETS) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_paper_dataset_entries_are_complete(name: str) -> None:
    spec = registry.get(name)
    assert spec.template == TEMPLATES[name] and spec.template.count("{}") == 1
    assert spec.generator is None and spec.num_classes and spec.sizes and spec.files
    if spec.layout == "split_json":
        assert spec.split_file == f"split_zhou_{spec.split_file.removeprefix('split_zhou_')}"
        assert spec.split_file in {f.name for f in spec.files}
    for rf in spec.files:
        assert rf.kind in ("file", "archive", "folder")
        assert rf.urls or rf.manual, f"{rf.name}: no source and no manual instructions"
        for url in rf.urls:
            assert re.match(r"^https?://[\w.-]+/\S+$", url), url
        if rf.hash:
            assert re.match(r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$", rf.hash)
        if rf.kind == "archive":
            assert rf.provides


def test_known_dead_or_manual_sources_come_with_mirrors_or_instructions() -> None:
    caltech = registry.get("caltech101").files[0]
    assert "data.caltech.edu/records/mzrjq-6wc02" in caltech.urls[0]
    assert "zenodo.org/records/7711810" in registry.get("eurosat").files[0].manual
    cars = {f.name: f for f in registry.get("stanford_cars").files}
    assert "cyizhuo/Stanford-Cars-dataset" in cars["cars_train.tgz"].notes and cars["car_devkit.tgz"].manual
    assert registry.get("imagenet").files[0].kind == "folder"
    assert (
        "drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O" in registry.get("ucf101").files[0].manual
    )


def test_demo_datasets_are_generated_with_the_generators_templates() -> None:
    from promptbias.demo import world as demo

    for name in ("demo_shapes", "demo_textures", "demo_aerial"):
        spec = registry.get(name)
        assert spec.generator == "promptbias.demo.world:generate_dataset"
        assert spec.split_file == f"split_{name}.json" and not spec.files
        assert spec.template == demo.DEMO_DATASETS[name].template


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'cifar10' — use one of: imagenet, caltech101"):
        registry.get("cifar10")


def test_params_sweep_datasets_are_registered() -> None:
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for name in params["sweep"]["datasets"]:
        registry.get(name)


def test_clean_classname() -> None:
    assert registry.clean_classname("american_bulldog") == "american bulldog"
