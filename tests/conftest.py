"""Fixtures shared by the test modules under tests/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny per-step policy batches: intra-op threads only add contention on a shared box.

    Modules that train use it for all their tests:
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
