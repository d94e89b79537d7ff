"""Shared fixtures: tiny and ViT-B-16 random-initialised CLIPs (no network, CPU); a loopback HTTP server."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from promptbias.model import load_clip
from tests.loopback import LoopbackServer

logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "No pretrained weights loaded" on random init


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="session")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip("promptbias-tiny", None)


@pytest.fixture(scope="session")
def vitb16():
    torch.manual_seed(0)
    return load_clip("ViT-B-16-quickgelu", None)


@pytest.fixture
def tiny_images(tiny_clip):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, tiny_clip.image_size, tiny_clip.image_size, generator=g)


@pytest.fixture(scope="session")
def classnames() -> list[str]:
    """Class names with the real spread of token lengths (EuroSAT, DTD, Cars-, Aircraft-, Pets-like)."""
    return list(CLASSNAMES)


CLASSNAMES = [
    "Annual Crop Land",
    "Herbaceous Vegetation Land",
    "banded",
    "2012 Mercedes-Benz Sprinter Extended Cargo Van",
    "707-320",
    "american_pit_bull_terrier",
    "cat",
]
