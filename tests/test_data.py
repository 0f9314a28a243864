"""Tests of robustnb.data that cannot live in its notebook: the full MNIST files under $ROBUSTNB_DATA (skipped when
they are not there), an import in a fresh process, and CUDA. The readers, checksums, offline downloads, the batch
iterator and the augmentation are tested in nbs/01_data.ipynb."""
import gzip
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import robustnb.data as D
from robustnb.data import Batches, ChecksumError, dataset_info, get_data

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def mnist_root() -> Path:
    "The root holding MNIST, from $ROBUSTNB_DATA; skip the test when there is none."
    root = os.environ.get("ROBUSTNB_DATA")
    if not root: pytest.skip("MNIST checks need $ROBUSTNB_DATA pointing at a folder with MNIST/raw/*.gz (not set)")
    raw = Path(root) / "MNIST" / "raw"
    if not all((raw / f"{n}.gz").is_file() for n in D._IDX.values()):
        pytest.skip(f"MNIST .gz files not found under {raw}")
    return Path(root)


# ---------------------------------------------------------------- MNIST from the standard files

def test_mnist_parses_with_official_counts():
    ds = get_data("mnist", root=mnist_root())
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert torch.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    assert ds.info == dataset_info("mnist") and ds.info.shape == (1, 28, 28)
    assert abs(ds.x_train.float().div(255).mean().item() - ds.info.mean[0]) < 1e-4
    # the held-out split comes from train, seeded
    dv = get_data("mnist", root=mnist_root(), val_size=5000, seed=1)
    assert (len(dv.x_train), len(dv.x_val)) == (55000, 5000)
    assert torch.bincount(torch.cat([dv.y_train, dv.y_val])).tolist() == MNIST_TRAIN_COUNTS


def test_mnist_from_env_var(monkeypatch):
    root = mnist_root()
    monkeypatch.setenv("ROBUSTNB_DATA", str(root))
    assert torch.bincount(get_data("mnist").y_test).tolist() == MNIST_TEST_COUNTS


def test_official_mnist_ungzipped_is_accepted_and_equal(tmp_path):
    src = mnist_root() / "MNIST" / "raw"
    raw = tmp_path / "MNIST" / "raw"; raw.mkdir(parents=True)
    for name in D._IDX.values(): (raw / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
    a, b = get_data("mnist", root=tmp_path), get_data("mnist", root=mnist_root())
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    data = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(data[:-784])  # one image short: refused, naming the file
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte"):
        get_data("mnist", root=tmp_path)


def test_mnist_download_with_urllib_fallback(tmp_path, monkeypatch):
    root = mnist_root()
    monkeypatch.setattr(D, "_torchvision_datasets", lambda: None)
    saved = list(D._MNIST_MIRRORS)
    D._MNIST_MIRRORS[:] = [(tmp_path / "nowhere").as_uri() + "/", (root / "MNIST" / "raw").as_uri() + "/"]
    try:
        with pytest.raises(FileNotFoundError):
            get_data("mnist", root=tmp_path / "data")  # download=False never fetches
        ds = get_data("mnist", root=tmp_path / "data", download=True)
    finally:
        D._MNIST_MIRRORS[:] = saved
    assert torch.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in D._IDX.values())


# ---------------------------------------------------------------- a fresh process

def test_import_does_not_import_torchvision(tmp_path):
    fake = tmp_path / "fake" / "torchvision"; fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("IMPORTED = True\n")  # imports fine, so an import would stay in sys.modules
    code = textwrap.dedent("""
        import importlib.util, sys
        assert importlib.util.find_spec('torchvision') is not None  # an importable torchvision is there
        import robustnb, robustnb.data
        print('torchvision' in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake")] + sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- CUDA

def unique_images(n, c=3, h=8, w=8):
    "uint8 images whose pixels are distinct and non-zero within each image (so a crop identifies its shift)."
    base = torch.arange(1, h * w + 1).reshape(1, 1, h, w)
    x = (base + 3 * torch.arange(c).reshape(1, c, 1, 1) + torch.arange(n).reshape(n, 1, 1, 1) % 50)
    return x.clamp(max=255).to(torch.uint8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_get_data_on_cuda():
    ds = get_data("digits", device="cuda")
    assert ds.x_train.is_cuda and ds.y_val is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_match_cpu():
    x = unique_images(64)
    kw = dict(batch_size=16, seed=1, augment="crop_flip", pad=2)
    for (xg, yg), (xc, yc) in zip(Batches(x, torch.arange(64), device="cuda", **kw), Batches(x, torch.arange(64), **kw)):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
