"""Test setup: run the real Triton kernels on CPU through Triton's interpreter when CUDA is absent.

TRITON_INTERPRET must be set before triton (and so fastvae) is imported, which is why it
happens here, at the top of the first file pytest loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from helpers import KERNEL_DEVICE  # noqa: E402

import fastvae  # noqa: E402,F401

CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cuda: needs a CUDA device (bf16 kernels, CUDA graphs, int64 indexing past 2**31)",
    )


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return KERNEL_DEVICE
