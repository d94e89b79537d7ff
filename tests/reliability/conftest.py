"""Fixtures of the reliability suite: one demo-world workspace with the tiny CLIP, single-threaded torch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.workspace import Workspace


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny ops on a shared 2-core machine run far faster single-threaded (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def base_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """demo_shapes fetched and split (4 shots, seed 1) under the tiny-CLIP params; copy it, never mutate it."""
    torch.set_num_threads(1)
    return Workspace.create(tmp_path_factory.mktemp("reliability") / "base", datasets=["demo_shapes"])
