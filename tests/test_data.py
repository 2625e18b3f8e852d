"""catkd.data: datasets by name, the reductions and the on-device BatchLoader.

No test touches the network: an autouse fixture makes every urllib request fail, and the tests
that exercise the download path replace torchvision's dataset classes with fakes.
"""

import dataclasses
import gzip
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from catkd import config, data
from catkd.data import BatchLoader, ImageDataset, keep_classes, keep_fraction, load


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("CATKD_DATA", raising=False)


@pytest.fixture(scope="module")
def fashion_test():
    return load("fashion-mnist", "test", download=False)


def toy_dataset(n, num_classes=None, channels=3, size=4, mean=None, std=None):
    """n images whose label is their index (so a batch tells which images it holds)."""
    num_classes = num_classes or n
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(n))
    return ImageDataset(images, torch.arange(n) % num_classes,
                        [f"c{k}" for k in range(num_classes)],
                        mean or (0.5,) * channels, std or (0.25,) * channels, "toy")


def labels_of(loader):
    return torch.cat([labels for _, labels in loader])


# ----------------------------------------------------------------------------------- by name
def test_names_and_errors():
    assert set(data.names()) == {"cifar100", "fashion-mnist", "digits", "stl10", "tiny-imagenet",
                                 "synthetic", "synthetic-distractors", "imagenet"}
    with pytest.raises(ValueError, match="cifar100.*fashion-mnist"):
        load("mnist")
    with pytest.raises(ValueError, match="train, test"):
        load("digits", "val")
    with pytest.raises(ValueError, match="imagenet_loader"):
        load("imagenet")


# ----------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_real(fashion_test):
    ds = fashion_test
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == 28 and len(ds) == 10000
    assert ds.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                          "Sneaker", "Bag", "Ankle boot"]
    assert ds.mean == (0.2860,) and ds.std == (0.3530,) and ds.masks is None
    # The published statistics are the train split's; the test split is close to them.
    pixels = ds.images.double() / 255
    assert abs(pixels.mean().item() - 0.2860) < 0.005 and abs(pixels.std().item() - 0.3530) < 0.005


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("layout", ["fashion-mnist/{}.gz", "FashionMNIST/raw/{}"])
def test_fashion_mnist_layouts_and_root_first(tmp_path, monkeypatch, layout):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 251
    write_idx(tmp_path / layout.format("t10k-images-idx3-ubyte"), images)
    write_idx(tmp_path / layout.format("t10k-labels-idx1-ubyte"), np.array([7, 0, 3]))
    monkeypatch.setenv("CATKD_DATA", str(tmp_path))  # found through the environment, before
    ds = load("fashion-mnist", "test", download=False)  # the system copy
    assert ds.images.shape == (3, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images).to(torch.uint8))
    assert ds.labels.tolist() == [7, 0, 3]


def test_fashion_mnist_missing_names_places(tmp_path, monkeypatch):
    hidden = tmp_path / "no-system-copy"
    monkeypatch.setattr(data.readers, "SYSTEM_FASHION_MNIST", hidden)
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", "train", root=root, download=False)
    message = str(info.value)
    for place in (root / "fashion-mnist", root / "FashionMNIST" / "raw", hidden):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message

    attempts = []

    def failing_download(root, train, download):
        attempts.append(download)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", failing_download)
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load("fashion-mnist", "train", root=root)
    assert attempts == [True]


# --------------------------------------------------------------------- CIFAR-100, STL-10: errors
class FakeCIFAR100:
    """Stands in for torchvision's CIFAR100: files 'present' or not, download failing."""

    present = True
    calls = []

    def __init__(self, root, train, download):
        FakeCIFAR100.calls.append(download)
        if download:
            raise urllib.error.URLError("no network")
        if not self.present:
            raise RuntimeError("Dataset not found or corrupted.")
        self.data = (np.arange(2 * 32 * 32 * 3) % 256).astype(np.uint8).reshape(2, 32, 32, 3)
        self.targets = [5, 99]
        self.classes = [f"c{k}" for k in range(100)]


def test_cifar100_local_copy_and_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    FakeCIFAR100.calls = []
    ds = load("cifar100", "train", root=tmp_path)
    assert FakeCIFAR100.calls == [False]  # a local copy: no download tried
    assert ds.images.shape == (2, 3, 32, 32)
    assert torch.equal(ds.images.permute(0, 2, 3, 1), torch.from_numpy(FakeCIFAR100(0, 0, 0).data))
    assert ds.labels.tolist() == [5, 99] and ds.num_classes == 100
    assert ds.mean == (0.5071, 0.4867, 0.4408) and ds.std == (0.2675, 0.2565, 0.2761)

    monkeypatch.setattr(FakeCIFAR100, "present", False)
    FakeCIFAR100.calls = []
    with pytest.raises(FileNotFoundError) as info:
        load("cifar100", "test", root=tmp_path)
    assert FakeCIFAR100.calls == [False, True]  # looked, then tried to download
    assert str(tmp_path / "cifar-100-python") in str(info.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in str(info.value)


def test_stl10_from_torchvision(tmp_path, monkeypatch):
    class FakeSTL10:
        def __init__(self, root, split, download):
            assert not download
            # torchvision holds the images as a transposed (non-contiguous) view
            self.data = np.arange(2 * 3 * 96 * 96).reshape(2, 3, 96, 96).astype(np.uint8)
            self.data = self.data.transpose(0, 1, 3, 2)
            self.labels = np.array([9, 0], dtype=np.uint8)
            self.classes = [f"c{k}" for k in range(10)]

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    ds = load("stl10", "test", root=tmp_path)
    assert ds.images.shape == (2, 3, 96, 96) and ds.images.is_contiguous()
    assert torch.equal(ds.images, torch.from_numpy(FakeSTL10(0, 0, False).data))
    assert ds.labels.tolist() == [9, 0] and ds.labels.dtype == torch.int64


@pytest.mark.parametrize("name, place", [("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary"),
                                         ("tiny-imagenet", "tiny-imagenet-200")])
def test_missing_dataset_without_download(tmp_path, name, place):
    with pytest.raises(FileNotFoundError, match=place):
        load(name, "test", root=tmp_path, download=False)


# ------------------------------------------------------------------------------ Tiny ImageNet
def write_jpeg(path, colour, mode="RGB", size=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), colour).save(path, quality=95)


def test_tiny_imagenet_folder(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    colours = {"n02": (200, 30, 30), "n01": (30, 200, 30)}
    for wnid, colour in colours.items():
        for i in range(2):
            write_jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour)
    write_jpeg(folder / "train" / "n01" / "images" / "n01_grey.JPEG", 128, mode="L")
    write_jpeg(folder / "val" / "images" / "val_0.JPEG", colours["n02"])
    write_jpeg(folder / "val" / "images" / "val_1.JPEG", colours["n01"])
    (folder / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn01\t0\t0\t10\t10\n")
    (folder / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby, tabby cat\n")

    train = load("tiny-imagenet", "train", root=tmp_path)
    assert train.images.shape == (5, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.classes == ["goldfish", "tabby"]  # wnids sorted: n01 is label 0
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    colour_of = train.images.float().mean((2, 3))
    assert torch.allclose(colour_of[3], torch.tensor([200.0, 30, 30]), atol=4)
    assert torch.allclose(colour_of[2], torch.tensor([128.0, 128, 128]), atol=2)  # greyscale JPEG
    test = load("tiny-imagenet", "test", root=tmp_path)
    assert test.labels.tolist() == [1, 0]
    assert torch.allclose(test.images.float().mean((2, 3))[1], torch.tensor([30.0, 200, 30]),
                          atol=4)


# ------------------------------------------------------------------------------------- digits
def test_digits_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load("digits", "train"), load("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.images.max() == 255 and test.mean == train.mean
    full = load_digits()
    for label in range(10):
        count = int((full.target == label).sum())
        assert int((train.labels == label).sum()) == round(0.8 * count)
    # train and test partition the dataset: together they are the full multiset of images.
    scaled = np.round(full.images * (255 / 16)).astype(np.uint8)
    everything = Counter((img.tobytes(), int(t)) for img, t in zip(scaled, full.target))
    split = Counter((img.numpy().tobytes(), int(t)) for ds in (train, test)
                    for img, t in zip(ds.images[:, 0], ds.labels))
    assert split == everything
    assert torch.equal(load("digits", "train").images, train.images)  # deterministic


# ---------------------------------------------------------------------------------- synthetic
def test_synthetic_reproducible_masks_and_contrast():
    a, b = data.synthetic(300, num_classes=20, seed=5), data.synthetic(300, num_classes=20, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, data.synthetic(300, num_classes=20, seed=6).images)
    assert a.images.shape == (300, 3, 32, 32) and a.masks.shape == (300, 32, 32)
    assert a.masks.dtype == torch.bool and a.num_classes == 20
    assert torch.bincount(a.labels).tolist() == [15] * 20
    area = a.masks.sum((1, 2))
    assert area.min() > 20 and area.max() < 0.6 * 32 * 32
    # Each object sits inside the image: its bounding box spans less than the image either way.
    for mask in a.masks:
        assert mask.any(0).sum() < 32 and mask.any(1).sum() < 32
    pixels = a.images.float()
    for image, mask in zip(pixels, a.masks):
        inside, outside = image[:, mask].mean(1), image[:, ~mask].mean(1)
        assert (inside - outside).abs().max() > 60  # saturated colour vs a grey background
    assert len(set(a.classes)) == 20
    with pytest.raises(ValueError):
        data.synthetic(10, num_classes=data.SYNTHETIC_MAX_CLASSES + 1)


def test_synthetic_splits():
    test = load("synthetic", "test")
    assert len(test) == 2000 and test.num_classes == 10 and test.masks is not None
    assert not torch.equal(test.images[:100], data.synthetic(100, seed=0).images)


def test_synthetic_difficulty_defaults_are_the_synthetic_dataset():
    default = data.synthetic(300, seed=4)
    explicit = data.synthetic(300, seed=4, difficulty=data.SyntheticDifficulty())
    assert torch.equal(default.images, explicit.images)
    assert data.SYNTHETIC_VARIANTS["synthetic"] == data.SyntheticDifficulty()
    hard = load("synthetic-distractors", "test")
    assert hard.name == "synthetic-distractors" and len(hard) == 2000 and hard.masks is not None
    assert torch.equal(hard.labels, load("synthetic", "test").labels)  # only the pixels differ


def test_synthetic_distractors_reproducible_and_outside_the_mask():
    flat = dict(texture=0.0, noise=0.0)  # a constant background: every other pixel is an object
    difficulty = data.SyntheticDifficulty(distractors=2, **flat)
    a = data.synthetic(200, num_classes=20, seed=7, difficulty=difficulty)
    b = data.synthetic(200, num_classes=20, seed=7, difficulty=difficulty)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, data.synthetic(200, num_classes=20, seed=8,
                                                    difficulty=difficulty).images)
    plain = data.synthetic(200, num_classes=20, seed=7, difficulty=data.SyntheticDifficulty(**flat))
    assert torch.equal(a.masks, plain.masks)  # distractors leave the object and its mask alone
    extra = []
    for image, clean, mask in zip(a.images, plain.images, a.masks):
        # The object is drawn last, in one colour: its mask shows nothing else.
        assert torch.equal(image[:, mask], clean[:, mask])
        assert (image[:, mask] == image[:, mask][:, :1]).all()
        extra.append((image != clean).any(0).sum().item())
    # Distractors (radius 8-12% of the side) add pixels outside the mask in every image.
    assert min(extra) > 5


def test_synthetic_difficulty_changes_the_images():
    def background_std(difficulty):
        ds = data.synthetic(200, seed=2, difficulty=difficulty)
        pixels = ds.images.float()[:, 0]
        return pixels[~ds.masks].std().item()

    base = data.SyntheticDifficulty()
    calm = background_std(dataclasses.replace(base, texture=0.0, noise=0.0))
    assert background_std(dataclasses.replace(base, texture=0.3)) > background_std(base) > calm
    assert background_std(dataclasses.replace(base, noise=0.2)) > background_std(base)
    small = data.synthetic(200, seed=2, difficulty=data.SyntheticDifficulty(radius=(0.1, 0.15)))
    large = data.synthetic(200, seed=2, difficulty=data.SyntheticDifficulty(radius=(0.3, 0.4)))
    assert small.masks.sum((1, 2)).float().mean() * 3 < large.masks.sum((1, 2)).float().mean()


@pytest.mark.parametrize("settings, message", [
    (dict(radius=(0.3, 0.2)), "radius"), (dict(radius=(0.0, 0.2)), "radius"),
    (dict(radius=(0.2, 0.5)), "radius"), (dict(texture=-0.1), "texture"),
    (dict(noise=-0.1), "noise"), (dict(distractors=-1), "distractors"),
    (dict(distractors=1.5), "distractors"),
    (dict(distractors=1, distractor_radius=(0.1, 0.2)), "distractor_radius"),
])
def test_synthetic_bad_difficulty(settings, message):
    with pytest.raises(ValueError, match=message):
        data.SyntheticDifficulty(**settings)


def test_synthetic_distractors_need_other_classes():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        data.synthetic(10, num_classes=1, difficulty=data.SyntheticDifficulty(distractors=1))


# --------------------------------------------------------------------------------- reductions
def test_keep_classes():
    ds = data.synthetic(200, num_classes=10, seed=1)
    kept = keep_classes(ds, 3)
    assert sorted(set(kept.labels.tolist())) == [0, 1, 2]
    assert len(kept) == int((ds.labels < 3).sum()) == 60
    assert kept.num_classes == 10  # the classifier keeps its K outputs
    assert torch.equal(kept.images, ds.images[ds.labels < 3])
    assert torch.equal(kept.masks, ds.masks[ds.labels < 3])
    assert len(keep_classes(ds, 10)) == 200
    for bad in (0, 11):
        with pytest.raises(ValueError):
            keep_classes(ds, bad)


def test_keep_fraction():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 4)
    ds = ImageDataset(torch.arange(21, dtype=torch.uint8).view(21, 1, 1, 1), labels,
                      ["a", "b", "c"], (0.5,), (0.5,), "toy")
    kept = keep_fraction(ds, 0.3)
    assert torch.bincount(kept.labels).tolist() == [3, 2, 1]  # round(3.0), round(2.1), round(1.2)
    assert torch.equal(keep_fraction(ds, 0.3).images, kept.images)
    picks = {tuple(keep_fraction(ds, 0.5, seed=s).images.flatten().tolist()) for s in range(5)}
    assert len(picks) > 1  # the seed matters
    assert torch.equal(ds.labels[kept.images.flatten().long()], kept.labels)  # pairs kept
    assert torch.equal(keep_fraction(ds, 1.0).images, ds.images)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            keep_fraction(ds, bad)


# -------------------------------------------------------------------------------- BatchLoader
def test_loader_normalises_test_split_in_order(fashion_test):
    loader = BatchLoader(fashion_test, 1000, train=False)
    assert len(loader) == 10
    batches = list(loader)
    images = torch.cat([x for x, _ in batches])
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(torch.cat([y for _, y in batches]), fashion_test.labels)
    expected = (fashion_test.images.float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(images, expected, atol=1e-5)
    assert abs(images.mean().item()) < 0.02 and abs(images.std().item() - 1) < 0.02


def test_loader_test_mode_partial_batch_and_shards():
    ds = toy_dataset(23)
    loader = BatchLoader(ds, 5, train=False)
    assert len(loader) == 5 and [len(y) for _, y in loader] == [5, 5, 5, 5, 3]
    shards = [labels_of(BatchLoader(ds, 4, train=False, rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat(shards), ds.labels)  # contiguous, each image exactly once
    assert {len(s) for s in shards} == {11, 12}


def test_loader_train_epochs_reproducible_and_private_rng():
    ds = toy_dataset(50)
    loader = BatchLoader(ds, 8, train=True, seed=3)
    assert len(loader) == 6
    rng_state = torch.random.get_rng_state()
    first = list(loader)  # epoch 0; the loader advances to epoch 1
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert all(x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 for x, _ in first)
    seen = torch.cat([y for _, y in first])
    assert len(seen) == 48 and len(set(seen.tolist())) == 48  # no repeats, last batch dropped

    second = list(loader)
    replay = BatchLoader(ds, 8, train=True, seed=3)
    replay.set_epoch(1)
    for (x1, y1), (x2, y2) in zip(second, replay):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(labels_of(BatchLoader(ds, 8, train=True, seed=3)), labels_of(replay))
    other_seed = BatchLoader(ds, 8, train=True, seed=4)
    assert not torch.equal(torch.cat([x for x, _ in first]), torch.cat([x for x, _ in other_seed]))


def test_loader_train_shards_disjoint():
    ds = toy_dataset(51)
    shards = [BatchLoader(ds, 5, train=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(7)
    assert [len(s) for s in shards] == [5, 5]  # 25 images per rank, 5 full batches
    seen = [set(labels_of(s).tolist()) for s in shards]
    assert len(seen[0]) == len(seen[1]) == 25 and not seen[0] & seen[1]
    with pytest.raises(ValueError):
        BatchLoader(ds, 5, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError):
        BatchLoader(toy_dataset(3), 4, train=True)


def position_dataset(n, size=6):
    """n copies of an image whose channel 0 holds row + 1 and channel 1 holds column + 1."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8)
    image = torch.stack([rows[:, None].expand(size, size), rows[None, :].expand(size, size)])
    return ImageDataset(image.expand(n, 2, size, size).contiguous(),
                        torch.zeros(n, dtype=torch.int64), ["only"], (0.0, 0.0), (1.0, 1.0),
                        "positions")


def shifted(size, dy, dx, flipped):
    """The expected crop: input pixel (y + dy, x' + dx) with x' = size-1-x if flipped, else 0."""
    out = torch.zeros(2, size, size, dtype=torch.int64)
    for y in range(size):
        for x in range(size):
            sy, sx = y + dy, (size - 1 - x if flipped else x) + dx
            if 0 <= sy < size and 0 <= sx < size:
                out[:, y, x] = torch.tensor([sy + 1, sx + 1])
    return out


def test_loader_crop_and_flip_move_whole_images():
    size, padding = 6, 2
    loader = BatchLoader(position_dataset(200, size), 50, train=True, crop_padding=padding)
    candidates = {(dy, dx, flipped): shifted(size, dy, dx, flipped)
                  for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)
                  for flipped in (False, True)}
    used = Counter()
    for images, _ in loader:
        pixels = (images * 255).round().long()  # mean 0, std 1: values are x / 255
        for image in pixels:
            matches = [key for key, expected in candidates.items() if torch.equal(image, expected)]
            assert len(matches) == 1, "each output is one shifted (maybe mirrored) copy"
            used[matches[0]] += 1
    assert {flipped for _, _, flipped in used} == {False, True}
    assert {(dy, dx) for dy, dx, _ in used} == {(dy, dx) for dy, dx, _ in candidates}


def test_loader_without_augmentation_only_shuffles():
    ds = toy_dataset(16)
    loader = BatchLoader(ds, 4, train=True, crop_padding=0, flip=False)
    for images, labels in loader:
        expected = (ds.images[labels].float() / 255 - 0.5) / 0.25
        assert torch.allclose(images, expected, atol=1e-5)


def test_loader_channels_last():
    ds = toy_dataset(8, size=5)
    for train in (True, False):
        x, _ = next(iter(BatchLoader(ds, 4, train=train, channels_last=True)))
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x, _ = next(iter(BatchLoader(ds, 4, train=train)))
        assert x.is_contiguous()


# ---------------------------------------------------------------------------------- ImageNet
def test_imagenet_loader(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet"):
        data.imagenet_loader("train", 2, root=tmp_path, workers=0)
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            for i in range(2):
                path = tmp_path / "imagenet" / split / wnid / f"{i}.JPEG"
                write_jpeg(path, (10, 20, 30), size=40)
    test = data.imagenet_loader("test", 3, root=tmp_path, workers=0)
    batches = list(test)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 1]
    shards = [torch.cat([y for _, y in data.imagenet_loader("test", 3, root=tmp_path, workers=0,
                                                          rank=r, world_size=2)])
              for r in (0, 1)]
    assert torch.cat(shards).tolist() == [0, 0, 1, 1]
    train = data.imagenet_loader("train", 3, root=tmp_path, workers=0)
    train.set_epoch(1)
    assert [tuple(x.shape) for x, _ in train] == [(3, 3, 224, 224)]  # incomplete batch dropped


# ------------------------------------------------------------------------ the loaders of a config
def test_the_loaders_of_a_config_split_the_batch_among_ddp_processes():
    resolved = config.resolve(None, ["data.dataset=digits", "data.batch_size=32",
                                     "data.fraction=0.5"])
    loaders = data.loaders(resolved, "cpu", rank=1, world_size=2)
    images, _ = next(iter(loaders.train))
    train_set, test_set = data.datasets(resolved)
    assert len(images) == 16 and len(loaders.train) == len(train_set) // 32  # the recipe's steps
    assert (loaders.num_classes, loaders.in_channels, loaders.image_size) == (10, 1, 8)
    assert torch.equal(loaders.train_labels, train_set.labels) and len(train_set) < 1437
    assert sum(len(labels) for _, labels in loaders.test) == len(test_set) - len(test_set) // 2
    with pytest.raises(ValueError, match="make it a multiple of 3"):
        data.loaders(resolved, "cpu", rank=0, world_size=3)

