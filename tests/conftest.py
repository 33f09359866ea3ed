"""Shared fixtures: where the real evaluation data lives (tests skip when it is absent)."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new examples locally but replay a fixed, derandomised set in CI (CI=true),
# so that a landing never fails by chance. HYPOTHESIS_PROFILE=explore forces exploration.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore")
)

ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real data (../shared/data or $NAPARI_UNET_DATA) is not available")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny networks on one thread, as its subprocesses do (OMP_NUM_THREADS=1):
    faster on a busy 2-core box and bit-identical to the subprocesses' results."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
