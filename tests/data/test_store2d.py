"""The 2D store: corpus -> shards round trip, index, refusals, the same tensors as load_2d."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medfoundry.cli import main
from medfoundry.data.corpus2d import build_corpus_2d
from medfoundry.data.image2d import load_2d
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.store.images2d import (
    STORE2D_FILE,
    Store2DDataset,
    is_store2d,
    open_store2d,
)
from medfoundry.data.store.images2d_build import build_store2d, write_store2d
from medfoundry.data.unlabeled2d import collect_images
from medfoundry.errors import InputError

SIZE = 32


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A corpus of 16 images at 32²: 9 PNGs (two folders, names that sort differently as paths
    and as strings) and the 5 kept slices of an MR volume; 2 slices skipped."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a-b").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        image = rng.integers(0, 256, (40 + i, 50), dtype=np.uint8)
        Image.fromarray(image).save(src / "a" / f"person{i}_virus_{i}.png")
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).save(
            src / "a-b" / f"{i}.png"
        )
    vol = rng.uniform(0, 20, (24, 24, 7)).astype(np.float32)
    vol[4:20, 4:20, 1:6] += 500  # slices 0 and 6: near empty (skipped)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), src / "case0.nii.gz")
    out = tmp_path / "corpus"
    build_corpus_2d([src], out, size=SIZE, modality="MR", progress=False)
    return out


def test_round_trip_keeps_pixels_order_and_index(corpus):
    info = build_store2d(corpus, shard_size=5, progress=False)
    store = open_store2d(corpus / "store2d")
    paths = collect_images([corpus])  # the order a pretraining run on the folder reads
    assert len(store) == len(paths) == info["count"] == 14
    assert [s["count"] for s in info["shards"]] == [5, 5, 4]
    for i, path in enumerate(paths):
        assert store[i].dtype == np.uint8 and store[i].shape == (SIZE, SIZE)
        assert np.array_equal(store[i], np.asarray(Image.open(path)))
        assert store.index[i]["file"] == path.relative_to(corpus).as_posix()
    assert np.array_equal(store[-1], store[len(store) - 1])
    with pytest.raises(IndexError):
        store[len(store)]
    rows = {r["file"]: r for r in store.index}
    png = rows["src/a/person3_virus_3.png"]
    assert (png["group"], png["spacing"], png["modality"]) == ("src/person3", "", "unknown")
    axial = rows["src/case0_axial0002.png"]
    assert axial["group"] == "src/case0" and axial["spacing"] == "3x0.8x0.8"
    assert axial["modality"] == "MR" and axial["slice_index"] == "2"
    # the store inside the corpus leaves the corpus a valid image folder, the same images
    assert collect_images([corpus]) == paths


@pytest.mark.parametrize("size, channels", [(SIZE, 1), (SIZE, 3), (48, 1), (20, 3)])
def test_items_are_load_2d_of_the_png_bit_for_bit(corpus, size, channels):
    build_store2d(corpus, progress=False)
    store = open_store2d(corpus / "store2d")
    norm = dict(XRAY_NORMALIZATION)
    dataset = Store2DDataset(store, size, channels, norm)
    for i, path in enumerate(collect_images([corpus])):
        expected = load_2d(path, size, channels=channels, normalization=norm)
        item = dataset[i]
        assert item.shape == (channels, size, size) and item.dtype == torch.float32
        assert torch.equal(item, expected), path


def test_workers_read_the_same_items_in_random_order(corpus):
    build_store2d(corpus, shard_size=3, progress=False)
    store = open_store2d(corpus / "store2d")
    dataset = Store2DDataset(store, SIZE, 1, XRAY_NORMALIZATION, indices=[13, 2, 7, 0, 5, 9, 11])

    def batches(workers: int) -> list[torch.Tensor]:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3))
        loader = DataLoader(dataset, batch_size=2, sampler=order.tolist(), num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    first = int(torch.randperm(7, generator=torch.Generator().manual_seed(3))[0])
    assert torch.equal(serial[0][0], dataset[first])


def test_an_incomplete_or_damaged_store_is_refused_naming_it(corpus):
    build_store2d(corpus, shard_size=5, progress=False)
    root = corpus / "store2d"
    info = json.loads((root / STORE2D_FILE).read_text())
    (root / STORE2D_FILE).write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(InputError, match=r"store2d: incomplete 2D store \(its build stopped\)"):
        open_store2d(root)
    (root / STORE2D_FILE).write_text(json.dumps(info))
    shard = root / "shard_00001.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(InputError, match="shard_00001.npy"):
        open_store2d(root)
    shard.unlink()
    with pytest.raises(InputError, match=r"shard_00001.npy: missing"):
        open_store2d(root)
    with pytest.raises(InputError, match="not a 2D store"):
        open_store2d(corpus)


def test_a_stopped_build_is_refused_and_replaced_by_overwrite(corpus, monkeypatch):
    from medfoundry.data.store import images2d_build

    calls = {"n": 0}
    real = images2d_build.read_image

    def failing(path, ndim=None):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(path, ndim=ndim)

    monkeypatch.setattr(images2d_build, "read_image", failing)
    with pytest.raises(KeyboardInterrupt):
        build_store2d(corpus, shard_size=4, progress=False)
    monkeypatch.undo()
    root = corpus / "store2d"
    assert is_store2d(root)
    with pytest.raises(InputError, match="incomplete 2D store"):
        open_store2d(root)
    with pytest.raises(InputError, match="holds an unfinished 2D store"):
        build_store2d(corpus, progress=False)
    build_store2d(corpus, shard_size=4, overwrite=True, progress=False)
    assert len(open_store2d(root)) == 14


def test_refusals_of_the_build(corpus, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="refusing to delete it"):
        build_store2d(corpus, other, overwrite=True, progress=False)
    with pytest.raises(InputError, match="not a 2D corpus"):
        build_store2d(other, tmp_path / "s", progress=False)
    stray = corpus / "src" / "a" / "stray.png"  # pretraining on the folder would read it
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(stray)
    with pytest.raises(InputError, match="stray.png: not listed in"):
        build_store2d(corpus, progress=False)
    stray.unlink()
    info = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(InputError, match="unfinished 2D corpus"):
        build_store2d(corpus, progress=False)


def test_the_writer_refuses_wrong_images_and_counts(tmp_path):
    good = np.zeros((8, 8), np.uint8)
    with pytest.raises(InputError, match=r"float32 \(8, 8\), expected uint8"):
        write_store2d(tmp_path / "a", 8, 1, [(good.astype(np.float32), {})], progress=False)
    with pytest.raises(InputError, match="only 1 images, 2 announced"):
        write_store2d(tmp_path / "b", 8, 2, [(good, {})], progress=False)
    with pytest.raises(InputError, match="more images than the 1 announced"):
        write_store2d(tmp_path / "c", 8, 1, [(good, {}), (good, {})], progress=False)
    info = write_store2d(tmp_path / "d", 8, 2, [(good, {}), (good + 1, {})], progress=False)
    assert info["constant"] == [0, 1]


def test_prepare_2d_store_flag_writes_the_store(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "corpus"
    argv = ["prepare-2d", "--source", str(src), "--out", str(out), "--size", "16"]
    assert main([*argv, "--store", "--shard-size", "2", "--no-progress"]) == 0
    assert "2D store:" in capsys.readouterr().out
    store = open_store2d(out / "store2d")
    assert len(store) == 3 and store.info["shards"][0]["count"] == 2
    # --overwrite replaces corpus and store together
    assert main([*argv, "--store", "--overwrite", "--no-progress"]) == 0
    assert open_store2d(out / "store2d").shard_size == 4096
    assert main([*argv, "--store", "--shard-size", "0", "--overwrite"]) == 2
    assert "--shard-size must be a positive integer" in capsys.readouterr().err
