"""sls_fast.data: bundled offline sets, the VTAB-1k list format, ImageFolder, from_spec."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sls_fast import data
from sls_fast.io.datasets import IMAGENET_MEAN, IMAGENET_STD


def test_digits_splits_are_fixed_stratified_and_disjoint():
    sizes, idx_sets = {}, {}
    from sklearn.datasets import load_digits

    labels_all = load_digits().target
    for split in ("train", "val", "test"):
        idx = data.stratified_split(labels_all, split, seed=0)
        idx_sets[split] = set(idx.tolist())
        sizes[split] = len(idx)
        # stratified: every class share within 2 points of the whole set's
        share = np.bincount(labels_all[idx], minlength=10) / len(idx)
        assert np.abs(share - np.bincount(labels_all) / len(labels_all)).max() < 0.02
    assert sizes == {"train": 1077, "val": 360, "test": 360}
    assert not (idx_sets["train"] & idx_sets["val"]) and not (idx_sets["train"] & idx_sets["test"])
    assert set.union(*idx_sets.values()) == set(range(1797))
    assert np.array_equal(data.stratified_split(labels_all, "val", seed=0),
                          data.stratified_split(labels_all, "val", seed=0))
    assert not np.array_equal(data.stratified_split(labels_all, "val", seed=0),
                              data.stratified_split(labels_all, "val", seed=1))
    with pytest.raises(ValueError, match="split"):
        data.stratified_split(labels_all, "dev")


def test_digits_items():
    ds = data.digits("val", image_size=40)
    assert len(ds) == 360 and ds.num_classes == 10 and ds.labels.shape == (360,)
    x, y = ds[3]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32 and isinstance(y, int)
    assert y == ds.labels[3]
    # normalised with ImageNet's statistics: undo it and land in [0, 1]
    raw = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.max() > 0.5
    assert torch.allclose(raw[0], raw[1], atol=1e-6) and torch.allclose(raw[0], raw[2], atol=1e-6)
    # any size; mean/std overrides; batched access equals per-item access
    odd = data.digits("test", image_size=(17, 23), mean=(0, 0, 0), std=(1, 1, 1))
    assert odd[0][0].shape == (3, 17, 23) and 0 <= odd[0][0].min() and odd[0][0].max() <= 1
    xb, yb = next(iter(DataLoader(ds, batch_size=8)))
    assert torch.allclose(xb, torch.stack([ds[i][0] for i in range(8)]), atol=1e-6)
    assert yb.tolist() == ds.labels[:8].tolist()
    assert len(data.digits("all")) == 1797


def test_digits_takes_the_models_config():
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    mean, std = data.normalization(m)
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)
    ds = data.digits("train", model=m, image_size=None)
    assert ds.mean == mean and ds.image_size == (224, 224)  # pretrained config's input size
    ds = data.digits("train", model=m, image_size=32)
    assert ds.image_size == (32, 32) and ds.std == std


def test_lfw():
    ds = data.lfw("all", image_size=24)
    assert len(ds) == 200 and np.bincount(ds.labels).tolist() == [100, 100]
    assert ds.classes == ["non-face", "face"] and ds[0][1] == 1
    tr = data.lfw("train", image_size=24, seed=3)
    assert len(tr) == 120 and np.bincount(tr.labels).tolist() == [60, 60]


def _write_images(root, n_per_class=3, n_classes=3, size=(20, 14)):
    from PIL import Image

    rng = np.random.default_rng(0)
    entries = []
    for c in range(n_classes):
        d = root / "images" / f"class{c}"
        d.mkdir(parents=True)
        for k in range(n_per_class):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., c] = 255  # a class-specific channel
            p = d / f"{k}.png"
            Image.fromarray(arr).save(p)
            entries.append((f"images/class{c}/{k}.png", c))
    return entries


def test_vtab_list_reader(tmp_path):
    entries = _write_images(tmp_path)
    split_entries = {"train800": entries[:5], "val200": entries[5:7], "train800val200": entries[:7],
                     "test": entries[7:]}
    for name, items in split_entries.items():
        (tmp_path / f"{name}.txt").write_text("".join(f"{p} {y}\n" for p, y in items) + "\n")
    ds = data.vtab(tmp_path, "train800", image_size=24)
    assert len(ds) == 5 and ds.labels.tolist() == [y for _, y in entries[:5]]
    x, y = ds[4]
    assert x.shape == (3, 24, 24) and y == entries[4][1]
    # the transform: PIL bicubic resize to 24x24, ToTensor, Normalize(ImageNet)
    from PIL import Image

    img = Image.open(tmp_path / entries[4][0]).convert("RGB").resize((24, 24), Image.BICUBIC)
    expect = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
              - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-5)
    assert len(data.vtab(tmp_path, "val", image_size=24)) == 2  # alias of val200
    assert len(data.from_spec(f"vtab:{tmp_path}", "all", image_size=24)) == 7
    assert len(data.from_spec(f"vtab:{tmp_path}", "test", image_size=24)) == 2
    xb, yb = next(iter(DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 3, 24, 24) and yb.tolist() == ds.labels.tolist()

    with pytest.raises(ValueError, match="split"):
        data.vtab(tmp_path, "train1000")
    (tmp_path / "test.txt").write_text("images/class0/0.png 0\nbroken-line\n")
    with pytest.raises(ValueError, match="test.txt:2"):
        data.vtab(tmp_path, "test")
    (tmp_path / "test.txt").write_text("images/class0/0.png zero\n")
    with pytest.raises(ValueError, match="not an integer"):
        data.vtab(tmp_path, "test")
    (tmp_path / "test.txt").write_text("images/missing.png 0\n")
    with pytest.raises(ValueError, match="missing"):
        data.vtab(tmp_path, "test")
    (tmp_path / "val200.txt").unlink()
    with pytest.raises(ValueError, match="val200.txt"):
        data.vtab(tmp_path, "val200")
    with pytest.raises(ValueError, match="does not exist"):
        data.vtab(tmp_path / "nowhere", "test")


def test_image_folder(tmp_path):
    _write_images(tmp_path, n_per_class=5, n_classes=2)
    root = tmp_path / "images"
    ds = data.image_folder(root, image_size=16)
    assert len(ds) == 10 and ds.classes == ["class0", "class1"] and ds.labels.tolist() == [0] * 5 + [1] * 5
    assert ds[7][0].shape == (3, 16, 16) and ds[7][1] == 1
    parts = [data.image_folder(root, s, image_size=16) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [6, 2, 2]
    assert sorted(sum((p.samples for p in parts), [])) == sorted(ds.samples)
    # PATH/<split>/ wins when present
    (tmp_path / "split" / "train").mkdir(parents=True)
    (root / "class0").rename(tmp_path / "split" / "train" / "class0")
    assert len(data.from_spec(f"folder:{tmp_path / 'split'}", "train", image_size=16)) == 5
    with pytest.raises(ValueError, match="no images"):
        data.image_folder(tmp_path / "split" / "train" / "class0")


def test_from_spec():
    assert len(data.from_spec("digits", "val")) == 360
    assert data.from_spec("digits", "val")[0][0].shape == (3, 64, 64)
    assert data.from_spec("lfw", "test", image_size=20)[0][0].shape == (3, 20, 20)
    for bad, err in (("mnist", ValueError), ("vtab", ValueError), ("digits:x", ValueError), ("", TypeError)):
        with pytest.raises(err):
            data.from_spec(bad)
