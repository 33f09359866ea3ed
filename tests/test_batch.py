"""Whole-stack segmentation: numpy / dask / zarr in, memory / zarr / TIFF out, cancel, resume,
cluster."""

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

from napari_unet.errors import Cancelled
from napari_unet.inference.batch import SegmentConfig, segment_stack, segment_stack_distributed
from napari_unet.inference.predictor import PredictConfig
from napari_unet.io.files import read_array
from napari_unet.io.modelfile import ModelMetadata, save_model
from napari_unet.model import UNet, UNetConfig

CFG = SegmentConfig(predict=PredictConfig(device="cpu"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = UNet(UNetConfig(width=4, depth=2, dropout=0.0)).eval()
    # bias the head so that some pixels are foreground and some background, with decisive
    # logits: an untrained net's ~0.5 probabilities let rounding noise (two worker threads on a
    # cluster, another thread count) flip pixels between runs that must agree exactly
    with torch.no_grad():
        net.head.weight.mul_(200.0)
        net.head.bias[1] = 0.02
    meta = ModelMetadata(
        architecture=net.config,
        normalization={"method": "percentile", "low": 1.0, "high": 99.8},
        class_names=["background", "object"],
        provenance={},
    )
    return net, meta


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(0)
    return (rng.random((5, 70, 90)) * 255).astype(np.uint8)


def test_numpy_dask_and_zarr_inputs_agree(model, stack, tmp_path):
    net, meta = model
    ref = segment_stack(net, meta, stack, CFG)
    assert ref.shape == stack.shape and ref.dtype == np.uint32 and ref.max() > 0
    odd = da.from_array(stack, chunks=(2, 37, 53))
    np.testing.assert_array_equal(segment_stack(net, meta, odd, CFG), ref)
    zpath = tmp_path / "in.zarr"
    da.from_array(stack, chunks=(1, 70, 90)).to_zarr(str(zpath))
    np.testing.assert_array_equal(segment_stack(net, meta, read_array(zpath), CFG), ref)
    # instance ids are unique over the stack
    ids = [set(np.unique(p)) - {0} for p in ref]
    assert all(not (a & b) for i, a in enumerate(ids) for b in ids[i + 1 :])


def test_streams_to_tiff_and_zarr(model, stack, tmp_path):
    net, meta = model
    ref = segment_stack(net, meta, stack, CFG)
    tif = segment_stack(net, meta, stack, CFG, out=tmp_path / "out.tif")
    np.testing.assert_array_equal(tifffile.imread(tif), ref)
    z = segment_stack(net, meta, stack, CFG, out=tmp_path / "out.zarr")
    np.testing.assert_array_equal(np.asarray(read_array(z)), ref)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cancel_then_rerun_resumes_a_zarr_output(model, stack, tmp_path):
    net, meta = model
    ref = segment_stack(net, meta, stack, CFG)
    done = []

    def progress(i, total):
        done.append(i)

    with pytest.raises(Cancelled):
        segment_stack(
            net,
            meta,
            stack,
            CFG,
            out=tmp_path / "o.zarr",
            progress=progress,
            cancelled=lambda: len(done) >= 2,
        )
    assert done == [1, 2]
    # a cancelled TIFF leaves nothing behind
    with pytest.raises(Cancelled):
        segment_stack(net, meta, stack, CFG, out=tmp_path / "o.tif", cancelled=lambda: True)
    assert not (tmp_path / "o.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    done.clear()
    out = segment_stack(net, meta, stack, CFG, out=tmp_path / "o.zarr", progress=progress)
    assert done == [3, 4, 5]  # only the unfinished planes were redone
    np.testing.assert_array_equal(np.asarray(read_array(out)), ref)


def test_a_finished_plane_is_recorded_in_one_metadata_write(tmp_path, monkeypatch):
    """The done planes and the id offset must reach zarr.json together: a kill between two
    metadata writes once left a resumed run continuing from a stale offset (every id shifted)."""
    from zarr.storage import LocalStore

    from napari_unet.io.files import StackWriter

    writer = StackWriter(tmp_path / "o.zarr", (3, 8, 8), run="fingerprint")
    writes: list[str] = []
    real_set = LocalStore.set

    async def counting_set(self, key, value):
        writes.append(key)
        return await real_set(self, key, value)

    monkeypatch.setattr(LocalStore, "set", counting_set)
    writer.write(0, (0,), np.ones((8, 8), np.uint32), {"napari_unet_offset": 1})
    assert writes.count("zarr.json") == 1, writes
    monkeypatch.undo()
    reopened = StackWriter(tmp_path / "o.zarr", (3, 8, 8), run="fingerprint")
    assert reopened.done == {0}
    assert reopened._array.attrs["napari_unet_offset"] == 1


def test_time_series_with_channels(model):
    net = UNet(UNetConfig(in_channels=2, width=4, depth=2, dropout=0.0)).eval()
    _, meta = model
    meta = ModelMetadata(
        architecture=net.config,
        normalization=meta.normalization,
        class_names=meta.class_names,
        provenance={},
    )
    image = np.random.default_rng(1).random((2, 3, 40, 50, 2)).astype(np.float32)  # T, Z, Y, X, C
    labels = segment_stack(net, meta, image, CFG)
    assert labels.shape == (2, 3, 40, 50)


def test_local_cluster_gives_the_same_labels(model, stack, tmp_path, one_torch_thread):
    """Bit-identical labels need bit-identical network outputs: an untrained network sits near
    its decision boundary everywhere, and with several intra-op threads the float sums of two
    runs may differ in the last bit and flip a pixel. One torch thread and one worker thread
    make both runs add in the same order."""
    distributed = pytest.importorskip("distributed")
    net, meta = model
    model_path = save_model(tmp_path / "m.safetensors", net, meta)
    image_path = tmp_path / "stack.tif"
    tifffile.imwrite(image_path, stack)
    local = segment_stack(net, meta, stack, CFG)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        out = segment_stack_distributed(
            model_path,
            image_path,
            cluster.scheduler_address,
            CFG,
            out=tmp_path / "dist.zarr",
            max_in_flight=2,
        )
    np.testing.assert_array_equal(np.asarray(read_array(out)), local)
