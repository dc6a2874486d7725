"""Transforms, PairDataset / ImageDataset, collate into Batch, and the memory-mapped image cache."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from fakedata import make_karpathy, write_image
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from rsbench.config.schema import TrainConfig
from rsbench.contracts import Batch
from rsbench.datasets import load_dataset, load_image
from rsbench.datasets.cache import ImageCache, train_resize_size
from rsbench.datasets.torchdata import (
    ImageDataset,
    ImageNormalizer,
    PairDataset,
    build_transform,
    make_collate,
    )
from rsbench.errors import UserError
from rsbench.methods.base import IMAGENET_MEAN, IMAGENET_STD


def toy_tokenizer(caps: list[str]) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(caps), 8, dtype=torch.int64)
    for i, c in enumerate(caps):
        toks = [len(w) for w in c.split()][:8]
        ids[i, : len(toks)] = torch.tensor(toks)
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


@pytest.fixture(scope="module")
def rsicd(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsicd")
    make_karpathy(root, "rsicd")
    return load_dataset("rsicd", data_root=root)


def cfg(**kw) -> TrainConfig:
    c = TrainConfig(image_size=16)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def transform(c: TrainConfig, train: bool) -> v2.Compose:
    """build_transform from a resolved TrainConfig's plain values (as the engine calls it)."""
    return build_transform(c.image_size, c.resize, c.augments, train)


def test_transforms(rsicd):
    img = load_image(rsicd.train.image_paths[0])
    ev = transform(cfg(), train=False)
    x = ev(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8  # normalised per batch, on the device
    assert torch.equal(x, ev(img))
    direct = torch.from_numpy(np.array(img.resize((16, 16), Image.BILINEAR))).permute(2, 0, 1)
    assert (x.int() - direct.int()).abs().max() <= 1  # Pillow's resize, rounding aside
    tr = transform(cfg(augment="crop,flip,rotate"), train=True)
    kinds = [type(t) for t in tr.transforms]
    assert kinds[:4] == [v2.Resize, v2.RandomRotation, v2.RandomCrop, v2.RandomHorizontalFlip]
    assert tr.transforms[0].size == [train_resize_size(16)] * 2 == [17, 17]
    assert tr(img).shape == (3, 16, 16)
    assert transform(cfg(resize=20), train=True).transforms[0].size == [20, 20]
    plain = transform(cfg(augment="none"), train=True)
    assert torch.equal(plain(img), x)  # no augmentation: the eval pipeline
    assert [type(t) for t in build_transform(16, 0, {"flip"}, train=True).transforms] == \
        [v2.Resize, v2.RandomHorizontalFlip, v2.PILToTensor]


def test_image_normalizer_matches_per_image_pipeline() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=g)
    per_image = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    want = torch.stack([per_image(im) for im in x])
    got = ImageNormalizer(IMAGENET_MEAN, IMAGENET_STD)(x)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 1e-5
    cl = ImageNormalizer(IMAGENET_MEAN, IMAGENET_STD, channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, got)
    with pytest.raises(TypeError, match="uint8"):
        ImageNormalizer(IMAGENET_MEAN, IMAGENET_STD)(want)


def test_pair_dataset_caption_sampling_and_collate(rsicd):
    tf = transform(cfg(), train=True)
    ds = PairDataset(rsicd.train, tf, sampling="caption", seed=0)
    assert len(ds) == rsicd.train.n_captions
    img, cap, img_id, cap_id = ds[7]
    assert img.shape == (3, 16, 16) and cap == rsicd.train.captions[7] and img_id == rsicd.train.cap2img[7]
    assert cap_id == 7
    dl = DataLoader(ds, batch_size=5, shuffle=False, collate_fn=make_collate(toy_tokenizer))
    b = next(iter(dl))
    assert isinstance(b, Batch)
    assert b.images.shape == (5, 3, 16, 16) and b.text["input_ids"].shape == (5, 8)
    assert b.image_ids.dtype == torch.int64 and b.caption_ids.dtype == torch.int64
    assert b.caption_ids.tolist() == [0, 1, 2, 3, 4] and b.image_ids.tolist() == rsicd.train.cap2img[:5].tolist()
    pickle.dumps(make_collate(toy_tokenizer))  # collate must reach DataLoader workers


def test_pair_dataset_image_sampling_is_deterministic_per_epoch(rsicd):
    split = rsicd.train
    ev = transform(cfg(), train=False)
    ds = PairDataset(split, ev, sampling="image", seed=3)
    assert len(ds) == split.n_images

    def picks(d):
        return [d[i][3] for i in range(len(d))]

    e0 = picks(ds)
    for i, c in enumerate(e0):
        assert split.cap2img[c] == i  # one item per image, with one of its own captions
    assert picks(PairDataset(split, ev, sampling="image", seed=3)) == e0
    ds.set_epoch(1)
    e1 = picks(ds)
    assert e1 != e0
    ds.set_epoch(0)
    assert picks(ds) == e0
    assert picks(PairDataset(split, ev, sampling="image", seed=4)) != e0
    with pytest.raises(ValueError, match="sampling"):  # users get TrainConfig.validate's message first
        PairDataset(split, ev, sampling="random")


def test_image_dataset(rsicd):
    ev = transform(cfg(), train=False)
    ds = ImageDataset(rsicd.test, ev)
    assert len(ds) == 3
    x, i = ds[2]
    assert x.shape == (3, 16, 16) and i == 2
    xs, idx = next(iter(DataLoader(ds, batch_size=3)))
    assert xs.shape == (3, 3, 16, 16) and idx.tolist() == [0, 1, 2]


def test_cache_pixels_reuse_and_training_equivalence(rsicd, tmp_path):
    size = train_resize_size(16)
    cache = ImageCache.build(rsicd, size, cache_root=tmp_path, fingerprint=rsicd.fingerprint)
    assert not cache.reused and len(cache) == 18
    assert cache.data_path == tmp_path / f"{rsicd.fingerprint}_{size}.u8"
    assert cache.data_path.stat().st_size == 18 * size * size * 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for split in (rsicd.train, rsicd.val, rsicd.test):
        rows = cache.rows_for(split)
        for i, p in enumerate(split.image_paths):
            direct = np.asarray(load_image(p).resize((size, size), Image.BILINEAR))
            assert np.array_equal(cache.get_array(int(rows[i])), direct)
    mtime = cache.data_path.stat().st_mtime_ns
    again = ImageCache.build(rsicd, size, cache_root=tmp_path, fingerprint=rsicd.fingerprint)
    assert again.reused and cache.data_path.stat().st_mtime_ns == mtime
    # the memmap is never pickled into DataLoader workers
    assert len(pickle.dumps(again)) < 10_000 and pickle.loads(pickle.dumps(again)).get(0).size == (size, size)
    # training through the cache gives the same tensors as decoding the files (same random draws)
    tf = transform(cfg(augment="crop,flip,rotate"), train=True)
    plain = PairDataset(rsicd.train, tf, seed=0)
    cached = PairDataset(rsicd.train, tf, seed=0, cache=again)
    for i in (0, 9, 20):
        torch.manual_seed(i)
        a = plain[i][0]
        torch.manual_seed(i)
        b = cached[i][0]
        assert torch.equal(a, b)
    ev = transform(cfg(), train=False)
    assert ImageDataset(rsicd.test, ev, cache=again)[1][0].shape == (3, 16, 16)


def test_cache_rebuilt_when_images_change_and_for_splits_and_paths(tmp_path):
    root = tmp_path / "d"
    fs = make_karpathy(root, "ucm", per_class=6, classes=("a",))
    ds = load_dataset("ucm", data_root=root)
    c1 = ImageCache.build(ds.test, 12, cache_root=tmp_path / "c", fingerprint=ds.fingerprint)
    assert c1.data_path.name == f"{ds.fingerprint}_test_12.u8" and len(c1) == 1
    p = ds.test.image_paths[0]
    write_image(p, np.random.default_rng(99), 24)
    os.utime(p, ns=(1, 1))
    c2 = ImageCache.build(ds.test, 12, cache_root=tmp_path / "c", fingerprint=ds.fingerprint)
    assert not c2.reused
    assert np.array_equal(c2.get_array(0), np.asarray(load_image(p).resize((12, 12), Image.BILINEAR)))
    paths = [fs.image_dir / n for n in fs.splits["train"]]
    c3 = ImageCache.build(paths, 12, cache_root=tmp_path / "c")
    assert c3.row(paths[2]) == 2 and len(c3) == 4
    with pytest.raises(UserError, match="bad cache image size"):
        ImageCache.build(paths, 0, cache_root=tmp_path / "c")


def test_runner_image_cache_option_trains_from_the_cache(tmp_path, monkeypatch):
    """train.image_cache=true builds the memmap cache and the training/eval datasets read from it."""
    from rsbench.cli import main
    from rsbench.datasets.synthetic import generate_synthetic

    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    generate_synthetic(tmp_path / "data", n_images=24, image_size=32, seed=0)
    main(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(tmp_path / "data"),
          "--epochs", "1", "--out", str(tmp_path / "res"), "--set", "train.image_cache=true",
          "--set", "train.image_size=32", "--set", "train.batch_size=8", "--set", "backbone=test_resnet"])
    assert list((tmp_path / "cache" / "images").glob("*.u8")), "no image cache was built"
    assert (tmp_path / "res" / "synthetic" / "vsepp" / "seed0" / "metrics.json").is_file()
