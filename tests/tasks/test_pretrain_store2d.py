"""Pretraining from a 2D store gives the weights of the same run on the corpus folder it was
built from, reading images on demand; a store is read alone and an unfinished one refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfoundry.cli import main
from medfoundry.data.corpus2d import build_corpus_2d
from medfoundry.data.store.images2d import STORE2D_FILE
from medfoundry.data.store.images2d_build import build_store2d


def _corpus_with_store(xray_folder: Path, tmp_path: Path, size: int) -> Path:
    corpus = tmp_path / "corpus"
    build_corpus_2d([xray_folder], corpus, size=size, progress=False)
    build_store2d(corpus, shard_size=5, progress=False)
    return corpus


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


# corpus at the load size (no resize), and smaller than it (both paths resize the same way)
@pytest.mark.parametrize("corpus_size", [64, 48])
def test_a_run_from_the_store_equals_the_run_from_its_corpus_folder(
    xray_folder, tmp_path, tiny_pretrain_args, corpus_size
):
    corpus = _corpus_with_store(xray_folder, tmp_path, corpus_size)
    extra = ("--set", "data.val_fraction=0.25")  # 3 validation images: the split is exercised
    assert main(tiny_pretrain_args("moco", corpus, tmp_path / "folder", *extra)) == 0
    assert main(tiny_pretrain_args("moco", corpus / "store2d", tmp_path / "store", *extra)) == 0
    from_folder, from_store = _weights(tmp_path / "folder"), _weights(tmp_path / "store")
    assert from_folder.keys() == from_store.keys() and len(from_folder) > 10
    for name, tensor in from_folder.items():
        assert torch.equal(tensor, from_store[name]), name
    record = json.loads((tmp_path / "store" / "config.json").read_text())
    assert record["n_images"] == 12


def test_a_store_is_read_alone_and_an_unfinished_one_is_refused(
    xray_folder, tmp_path, tiny_pretrain_args, capsys
):
    corpus = _corpus_with_store(xray_folder, tmp_path, 64)
    store = corpus / "store2d"
    out = tmp_path / "run"
    args = tiny_pretrain_args("moco", store, out)
    both = [*args[:5], str(xray_folder), *args[5:]]  # --data STORE FOLDER
    assert main(both) == 2
    assert "a 2D store is read alone, got 2 --data entries" in capsys.readouterr().err
    info = json.loads((store / STORE2D_FILE).read_text())
    (store / STORE2D_FILE).write_text(json.dumps({**info, "complete": False}))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "store2d: incomplete 2D store (its build stopped); rebuild it "
        "(medfoundry prepare-2d --store, or build_store2d)"
    )
    assert len(err.splitlines()) == 1
    assert not out.exists()
