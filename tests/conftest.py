"""Shared pytest fixtures. Helper modules (tiny stages and pipelines) live in tests/helpers/."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not fight other jobs on a shared CPU.

    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
