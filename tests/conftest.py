"""Shared fixtures: real models load once per session; tiny random models are built in-process."""

from __future__ import annotations

import pytest
import torch

from headmine.models.loading import LoadedModel, load_model

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_model("smollm2")


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    return load_model("minilm")


@pytest.fixture(scope="session")
def toy() -> LoadedModel:
    return load_model("toy-induction")
