"Tests of robustnb.data: file readers, checksums, downloads (offline, via file:// URLs) and the batch iterator."
import gzip
import io
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import robustnb.data as D
from robustnb.data import (DATASETS, Batches, ChecksumError, Dataset, DataInfo, crop_flip, dataset_info, get_data,
                           md5sum, random_crop_flip, read_cifar_batch, read_idx, read_svhn_mat, to_float)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FILE_SETS = ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]


def mnist_root() -> Path:
    "The root holding MNIST, from $ROBUSTNB_DATA; skip the test when there is none."
    root = os.environ.get("ROBUSTNB_DATA")
    if not root: pytest.skip("MNIST checks need $ROBUSTNB_DATA pointing at a folder with MNIST/raw/*.gz (not set)")
    raw = Path(root) / "MNIST" / "raw"
    if not all((raw / f"{n}.gz").is_file() for n in D._IDX.values()):
        pytest.skip(f"MNIST .gz files not found under {raw}")
    return Path(root)


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">i4").tobytes() + a.astype(np.uint8).tobytes()


# ---------------------------------------------------------------- MNIST and digits

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


def test_ungzipped_idx_files_are_checked_like_gzipped_ones(tmp_path):
    "Un-gzipped MNIST files are md5-checked (their official sums), Fashion-MNIST's by size and labels; errors name the file."
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"; raw.mkdir(parents=True)
    xs = {"train": rng.integers(0, 256, (7, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    ys = {"train": np.arange(7) % 10, "t10k": np.array([9, 0, 4])}
    for s in xs:
        (raw / f"{s}-images-idx3-ubyte").write_bytes(idx_bytes(xs[s]))
        (raw / f"{s}-labels-idx1-ubyte").write_bytes(idx_bytes(ys[s]))
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte"):  # toy files are not MNIST
        get_data("mnist", root=tmp_path)
    # Fashion-MNIST (no published sums of the raw files): the official sizes and the label range are checked
    fm = tmp_path / "FashionMNIST" / "raw"; fm.mkdir(parents=True)
    for s, k in (("train", 60000), ("t10k", 10000)):
        (fm / f"{s}-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((k, 28, 28))))
        (fm / f"{s}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(k) % 10))
    assert get_data("fashion_mnist", root=tmp_path).x_train.shape == (60000, 1, 28, 28)
    (fm / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2])))  # a header that disagrees with the images
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: expected 10000 labels"):
        get_data("fashion_mnist", root=tmp_path)
    (fm / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10000, 11)))  # labels outside the 10 classes
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: labels must be in \\[0, 10\\), found 11"):
        get_data("fashion_mnist", root=tmp_path)
    (fm / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(10000) % 10)[:-10])  # truncated
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: idx file truncated"):
        get_data("fashion_mnist", root=tmp_path)
    (fm / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(10000) % 10))
    (fm / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 28, 28))))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: expected 60000 images"):
        get_data("fashion_mnist", root=tmp_path)


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


def test_digits_always_loads_and_is_fixed():
    a, b = get_data("digits"), get_data("digits")
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert a.x_train.dtype == torch.uint8 and a.x_train.max() == 255 and a.x_train.min() == 0
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    counts = torch.bincount(torch.cat([a.y_train, a.y_test]))
    assert (torch.bincount(a.y_test).float() / counts - 0.25).abs().max() < 0.02  # stratified 25 %
    assert a.info.num_classes == 10 and a.info.classes == [str(i) for i in range(10)]
    assert D.DEFAULT_DATASET == "digits"


def test_val_split_seeded_disjoint_and_complete():
    full = get_data("digits")
    a, b, c = (get_data("digits", val_size=0.25, seed=s) for s in (7, 7, 8))
    assert len(a.x_val) == round(0.25 * 1347) and len(a.x_val) + len(a.x_train) == 1347
    assert torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, c.x_val)
    rows = lambda t: {tuple(r) for r in t.flatten(1).tolist()}
    assert rows(torch.cat([a.x_train, a.x_val])) == rows(full.x_train)
    assert torch.equal(a.x_test, full.x_test)
    for bad in (-1, 1347, 1.0, -0.1, True, "10", 0.0001):
        with pytest.raises(ValueError, match="val_size"):
            get_data("digits", val_size=bad)


def test_device_argument():
    assert get_data("digits", device="cpu").x_train.device.type == "cpu"
    with pytest.raises(ValueError, match="allowed are"):
        get_data("digits", device="tpu")
    if torch.cuda.is_available():
        ds = get_data("digits", device="cuda")
        assert ds.x_train.is_cuda and ds.y_val is None


@pytest.mark.parametrize("name", ["linear2d", "nonlinear2d"])
def test_toy_sets(name):
    ds = get_data(name)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.shape == (1000, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1 and set(y.tolist()) == {0, 1}
    assert not torch.equal(ds.x_train, ds.x_test)
    assert ds.info.shape == (2,) and ds.info.num_classes == 2
    if name == "linear2d":
        s = (ds.x_train - torch.tensor(D.LINEAR2D_C)) @ torch.tensor(D.LINEAR2D_W)
        assert torch.equal((s > 0).long(), ds.y_train) and s.abs().min() >= 0.05


# ---------------------------------------------------------------- names, missing files, checksums

def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as e:
        get_data("imagenet")
    for n in FILE_SETS + ["digits", "linear2d", "nonlinear2d"]:
        assert n in str(e.value)
    assert sorted(DATASETS.names()) == sorted(FILE_SETS + ["digits", "linear2d", "nonlinear2d"])


@pytest.mark.parametrize("name", FILE_SETS)
def test_missing_files_named(name, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_data(name, root=tmp_path)
    msg = str(e.value)
    for f in DATASETS.get(name).files.values():
        assert str(tmp_path / f.rel) in msg
    assert "ROBUSTNB_DATA" in msg and "download=True" in msg and "root" in msg


def test_missing_files_under_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNB_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\$ROBUSTNB_DATA") as e:
        get_data("svhn")
    assert str(tmp_path / "train_32x32.mat") in str(e.value) and str(tmp_path / "test_32x32.mat") in str(e.value)


@pytest.mark.parametrize("name,rel", [("cifar10", "cifar-10-batches-py/data_batch_1"),
                                      ("cifar100", "cifar-100-python/train"),
                                      ("svhn", "train_32x32.mat"),
                                      ("mnist", "MNIST/raw/train-images-idx3-ubyte.gz"),
                                      ("fashion_mnist", "FashionMNIST/raw/train-images-idx3-ubyte.gz")])
def test_md5_mismatch_is_refused(name, rel, tmp_path):
    for f in DATASETS.get(name).files.values():
        p = tmp_path / f.rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"corrupt " + f.rel.encode())
    bad = tmp_path / rel
    with pytest.raises(ChecksumError) as e:
        get_data(name, root=tmp_path)
    err = e.value
    assert isinstance(err, ValueError) and err.path == str(bad)
    assert err.expected == next(f.md5 for f in DATASETS.get(name).files.values() if f.rel == rel)
    assert err.got == md5sum(bad) and err.expected in str(err) and err.got in str(err) and str(bad) in str(err)


# ---------------------------------------------------------------- parsers

def test_idx_parser():
    a = np.random.default_rng(1).integers(0, 256, (4, 5, 6)).astype(np.uint8)
    assert np.array_equal(read_idx(idx_bytes(a)), a) and np.array_equal(read_idx(gzip.compress(idx_bytes(a))), a)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(idx_bytes(a)[:-3])
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x00\x00\x0c\x01" + idx_bytes(a)[4:])


def test_cifar_and_svhn_parsers():
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (2, 3072)).astype(np.uint8)
    x, y = read_cifar_batch(pickle.dumps({"data": raw, "labels": [3, 7]}))
    assert x.shape == (2, 3, 32, 32) and x[1, 2, 31, 0] == raw[1, 2 * 1024 + 31 * 32] and y.tolist() == [3, 7]
    scipy_io = pytest.importorskip("scipy.io")
    X = rng.integers(0, 256, (32, 32, 3, 3)).astype(np.uint8)
    buf = io.BytesIO(); scipy_io.savemat(buf, {"X": X, "y": np.array([[10], [1], [9]], np.uint8)})
    x, y = read_svhn_mat(buf.getvalue())
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 9] and y.dtype == np.int64
    assert x[2, 1, 4, 17] == X[4, 17, 1, 2]  # (n, c, h, w) <- X[h, w, c, n]


# ---------------------------------------------------------------- downloads, offline via file:// URLs

def test_download_url_atomic(tmp_path):
    src = tmp_path / "a.bin"; src.write_bytes(os.urandom(3000))
    dst = D.download_url(src.as_uri(), tmp_path / "out" / "a.bin", md5sum(src))
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError, match="expected 0{32}"):
        D.download_url(src.as_uri(), tmp_path / "out" / "b.bin", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin"]  # no partial or temporary file


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


def test_download_failure_is_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_torchvision_datasets", lambda: None)
    saved = list(D._MNIST_MIRRORS)
    D._MNIST_MIRRORS[:] = [(tmp_path / "nowhere").as_uri() + "/"]
    try:
        with pytest.raises(FileNotFoundError, match="Download failed") as e:
            get_data("mnist", root=tmp_path / "data", download=True)
    finally:
        D._MNIST_MIRRORS[:] = saved
    assert str(tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(e.value)


def test_download_prefers_torchvision(tmp_path, monkeypatch):
    calls = []
    class FakeMNIST:
        def __init__(self, root, download, train): calls.append((root, download, train))
    monkeypatch.setattr(D, "_torchvision_datasets", lambda: type("tvd", (), {"MNIST": FakeMNIST}))
    with pytest.raises(FileNotFoundError):  # the fake writes nothing, so the files are still missing
        get_data("mnist", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), True, False)]


def test_cifar_archive_fetch(tmp_path):
    rng = np.random.default_rng(3)
    stage = tmp_path / "stage" / "cifar-10-batches-py"; stage.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        d = {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        batches[name] = d
        (stage / name).write_bytes(pickle.dumps(d))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stage, arcname="cifar-10-batches-py")
    root = tmp_path / "root"
    D._fetch_archive(archive.as_uri(), md5sum(archive), "cifar-10-batches-py")(root)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive or temp dir left
    files = {k: (root / f.rel).read_bytes() for k, f in D._C10_FILES.items()}
    xtr, ytr, xte, yte = D._read_cifar_set("labels", [f"data_batch_{i}" for i in range(1, 6)])(files)
    assert xtr.shape == (20, 3, 32, 32) and xte.shape == (4, 3, 32, 32)
    assert ytr.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    with pytest.raises(ChecksumError):
        D._fetch_archive(archive.as_uri(), "f" * 32, "cifar-10-batches-py")(tmp_path / "root2")
    assert not (tmp_path / "root2" / "cifar-10-batches-py").exists()


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


# ---------------------------------------------------------------- Batches

def ids_of(b):
    return [yb.tolist() for _, yb in b]


@pytest.mark.parametrize("n,bs", [(1, 4), (64, 16), (103, 10), (50, 64)])
def test_every_sample_once_per_epoch(n, bs):
    x, y = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)
    b = Batches(x, y, bs, seed=0)
    for _ in range(3):
        ids = ids_of(b)
        assert sorted(sum(ids, [])) == list(range(n)) and len(ids) == len(b) == -(-n // bs)


def test_order_seeded_per_epoch_and_resumable():
    x, y = torch.zeros(200, 3), torch.arange(200)
    b1, b2 = Batches(x, y, 32, seed=11), Batches(x, y, 32, seed=11)
    e = [ids_of(b1) for _ in range(3)]
    assert [ids_of(b2) for _ in range(3)] == e
    assert e[0] != e[1] != e[2] and e[0] != e[2]
    resumed = Batches(x, y, 32, seed=11); resumed.set_epoch(2)
    assert ids_of(resumed) == e[2]
    assert ids_of(Batches(x, y, 32, seed=12)) != e[0]
    it = iter(b1)  # epoch 3: the epoch is fixed when iteration starts
    b1.set_epoch(0)
    assert [yb.tolist() for _, yb in it] != e[0]
    assert ids_of(b1) == e[0]
    with pytest.raises(ValueError, match="epoch"):
        b1.set_epoch(-1)


def test_drop_last_and_no_shuffle():
    x, y = torch.zeros(103, 2), torch.arange(103)
    b = Batches(x, y, 10, drop_last=True, seed=4)
    ids = ids_of(b)
    assert len(b) == len(ids) == 10 and all(len(i) == 10 for i in ids) and len(set(sum(ids, []))) == 100
    assert sum(ids, []) == sum(ids_of(Batches(x, y, 10, seed=4)), [])[:100]
    assert sum(ids_of(Batches(x, y, 10, shuffle=False)), []) == list(range(103))
    assert len(Batches(x[:100], y[:100], 10, drop_last=True)) == 10


def test_batches_are_floats_of_the_right_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 5, 5), dtype=torch.uint8, generator=g)
    for xb, yb in Batches(x, torch.arange(40), 16):
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xb, x[yb].float() / 255)


@pytest.mark.parametrize("world_size,bs,drop_last", [(2, 16, False), (4, 12, False), (4, 12, True), (3, 3, False)])
def test_ddp_shards_disjoint_and_complete(world_size, bs, drop_last):
    n = 103
    x = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n)
    kw = dict(batch_size=bs, seed=9, drop_last=drop_last, augment="crop_flip", pad=2)
    single = list(Batches(x, y, **kw))
    ranks = [list(Batches(x, y, rank=r, world_size=world_size, **kw)) for r in range(world_size)]
    assert all(len(r) == len(single) for r in ranks)
    for i, (xs, ys) in enumerate(single):
        parts = [r[i] for r in ranks]
        assert torch.equal(torch.cat([p[1] for p in parts]), ys)  # rank r holds the r-th contiguous slice
        assert torch.equal(torch.cat([p[0] for p in parts]), xs)
        sets = [set(p[1].tolist()) for p in parts]
        assert sum(map(len, sets)) == len(set().union(*sets))
        if len(ys) == bs: assert all(len(p[1]) == bs // world_size for p in parts)


def test_batches_validation():
    x, y = torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10)
    for kw, msg in [(dict(batch_size=0), "batch_size"), (dict(batch_size=10, world_size=3), "divisible"),
                    (dict(batch_size=4, rank=2, world_size=2), "rank"), (dict(batch_size=4, augment="cutout"), "augment must be one of"),
                    (dict(batch_size=4, pad=-1), "pad"), (dict(batch_size=4, seed=-1), "seed")]:
        with pytest.raises(ValueError, match=msg):
            Batches(x, y, **kw)
    with pytest.raises(ValueError, match="same length"):
        Batches(x, y[:5], 4)
    with pytest.raises(ValueError, match="needs images"):
        Batches(torch.zeros(10, 2), y, 4, augment="crop_flip")
    with pytest.raises(ValueError, match="uint8"):
        Batches(x.long(), y, 4)


# ---------------------------------------------------------------- augmentation

def views(img, pad):
    "Every crop (shift within pad, zero fill) of `img`, with and without a left-right flip."
    H, W = img.shape[-2:]
    p = torch.nn.functional.pad(img, (pad,) * 4)
    out = {}
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            v = p[..., oy:oy + H, ox:ox + W]
            out[(oy - pad, ox - pad, False)], out[(oy - pad, ox - pad, True)] = v, v.flip(-1)
    return out


def unique_images(n, c=3, h=8, w=8):
    "uint8 images whose pixels are distinct and non-zero within each image (so a crop identifies its shift)."
    base = torch.arange(1, h * w + 1).reshape(1, 1, h, w)
    x = (base + 3 * torch.arange(c).reshape(1, c, 1, 1) + torch.arange(n).reshape(n, 1, 1, 1) % 50)
    return x.clamp(max=255).to(torch.uint8)


def test_crop_flip_exact():
    x = unique_images(2, h=5, w=7)
    out = crop_flip(x, torch.tensor([0, 3]), torch.tensor([3, 1]), torch.tensor([False, True]), pad=3)
    assert torch.equal(out[0], views(x[0], 3)[(-3, 0, False)])
    assert torch.equal(out[1], views(x[1], 3)[(0, -2, True)])
    assert torch.equal(crop_flip(x, torch.tensor([2, 2]), torch.tensor([2, 2]), torch.tensor([True, True]), 2),
                       x.flip(-1))  # no shift + flip = reversed width
    assert torch.equal(crop_flip(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                                 torch.tensor([False, False]), 0), x)


def test_batches_augmentation_properties():
    n, pad = 150, 3
    x = unique_images(n)
    seen = []
    for xb, yb in Batches(x, torch.arange(n), 32, seed=2, augment="crop_flip", pad=pad):
        assert xb.shape[1:] == x.shape[1:] and xb.min() >= 0 and xb.max() <= 1
        for img, i in zip(xb, yb):
            u8 = (img * 255).round().to(torch.uint8)
            key = next((k for k, v in views(x[i], pad).items() if torch.equal(v, u8)), None)
            assert key is not None, "an augmented image is not a crop-within-pad (+flip) of its source"
            seen.append(key)
    assert {k[2] for k in seen} == {False, True}
    shifts = {(dy, dx) for dy, dx, _ in seen}
    assert len(shifts) > 35 and {dy for dy, _ in shifts} == set(range(-pad, pad + 1))  # 49 possible; spread out
    assert sum(k != (0, 0, False) for k in seen) > 0.9 * n
    # the same seed and epoch give the same augmented images, another epoch other ones
    b1, b2 = (Batches(x, torch.arange(n), 32, seed=2, augment="crop_flip", pad=pad) for _ in range(2))
    e1 = [xb for xb, _ in b1]
    assert all(torch.equal(a, b) for a, (b, _) in zip(e1, b2))
    assert not all(torch.equal(a, b) for a, (b, _) in zip(e1, b1))


def test_random_crop_flip_seeded():
    x = unique_images(20)
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, random_crop_flip(x, 2, torch.Generator().manual_seed(0)))
    assert a.shape == x.shape and a.dtype == torch.uint8 and not torch.equal(a, x)


def test_to_float():
    assert torch.equal(to_float(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0]))
    assert to_float(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="uint8"):
        to_float(torch.tensor([1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_cuda_match_cpu():
    x = unique_images(64)
    kw = dict(batch_size=16, seed=1, augment="crop_flip", pad=2)
    for (xg, yg), (xc, yc) in zip(Batches(x, torch.arange(64), device="cuda", **kw), Batches(x, torch.arange(64), **kw)):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_a_cifar_pickle_that_would_run_code_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    class Evil:
        def __reduce__(self): return (os.system, (f"touch {marker}",))
    d = tmp_path / "cifar-10-batches-py"; d.mkdir()
    evil = pickle.dumps({"data": Evil(), "labels": [0]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]: (d / name).write_bytes(evil)
    with pytest.raises(ChecksumError):                  # get_data checks the md5 before it unpickles anything
        get_data("cifar10", root=tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system"):  # and the reader refuses it
        read_cifar_batch(evil)
    assert not marker.exists()
