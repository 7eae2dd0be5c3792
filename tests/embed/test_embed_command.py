"""`medfoundry embed`: whole images, grids, points, similarity, the random baseline, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medfoundry.cli import main
from medfoundry.embed import embed_boxes, load_eve_model, load_images
from medfoundry.errors import CheckpointError


def _npz(folder):
    with np.load(folder / "embeddings.npz") as z:
        return {k: z[k] for k in z.files}


def test_whole_images_and_grid(eve_checkpoint, gradient_images, tmp_path, capsys):
    out = tmp_path / "whole"
    assert main(["embed", "--model", str(eve_checkpoint), "--input", str(gradient_images),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    z = _npz(out)
    assert z["embeddings"].shape == (6, 16 * 0 + z["embeddings"].shape[1])
    assert sorted(set(z["label"])) == ["a", "b"]
    assert (z["boxes"] == np.array([0, 0, 96, 96], dtype=np.float32)).all()
    assert (out / "map.png").stat().st_size > 0 and (out / "embed.json").is_file()
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert len(rows) == 6 and rows[0]["scale"] == "1"
    assert "6 crops of 6 images" in capsys.readouterr().out

    grid = tmp_path / "grid"
    assert main(["embed", "--model", str(eve_checkpoint), "--input", str(gradient_images),
                 "--out", str(grid), "--grid", "2", "--scales", "1", "0.5", "--no-progress"]) == 0  # fmt: skip
    z = _npz(grid)
    assert len(z["embeddings"]) == 6 * (1 + 4)
    # the whole-image rows equal the first run's embeddings (same model, same crops)
    whole = z["embeddings"][z["scale"] == 1.0]
    np.testing.assert_allclose(whole, _npz(out)["embeddings"], rtol=1e-5, atol=1e-6)
    # a finished folder is not overwritten silently
    assert main(["embed", "--model", str(eve_checkpoint), "--input", str(gradient_images),
                 "--out", str(grid), "--no-progress"]) == 2  # fmt: skip
    assert "already holds embeddings" in capsys.readouterr().err


def test_embeddings_follow_the_crop_content(eve_checkpoint, gradient_images):
    """A crop's Eve is the backbone of that crop: equal crops give equal vectors, and a box
    cut from the image equals embedding the pre-cut image region."""
    model = load_eve_model(eve_checkpoint)
    paths = sorted(gradient_images.rglob("*.png"))
    images, sizes = load_images(paths, model)
    assert images.shape == (6, 1, 64, 64) and sizes[0].tolist() == [96, 96]
    boxes = torch.tensor([[0.0, 0, 48, 48], [0.0, 0, 48, 48], [48.0, 48, 96, 96]])
    emb = embed_boxes(model, images, sizes, torch.tensor([0, 0, 0]), boxes, batch_size=2)
    assert torch.allclose(emb[0], emb[1])
    assert not torch.allclose(emb[0], emb[2])
    direct = model.backbone(torch.nn.functional.interpolate(images[:1, :, :32, :32], size=32))
    torch.testing.assert_close(emb[0], direct[0], rtol=1e-4, atol=1e-5)


def test_points_and_similarity(eve_checkpoint, gradient_images, tmp_path):
    pts = tmp_path / "points.csv"
    pts.write_text(
        "image,x,y,size,name\n"
        "a/im0.png,20,30,32,disc\na/im0.png,80,80,32,corner\nb/im4.png,60,50,32,disc\n"
    )
    out = tmp_path / "pts"
    assert main(["embed", "--model", str(eve_checkpoint), "--input", str(gradient_images),
                 "--points", str(pts), "--out", str(out), "--no-progress",
                 "--similarity", str(gradient_images / "a" / "im0.png"), "24", "24",
                 "--crop-size", "32", "--stride", "16"]) == 0  # fmt: skip
    z = _npz(out)
    assert list(z["label"]) == ["disc", "corner", "disc"]
    assert z["boxes"][0].tolist() == [4.0, 14.0, 36.0, 46.0]
    with np.load(out / "similarity.npz") as s:
        maps = [s[f"map_{i}"] for i in range(2)]  # the images the points name
    assert maps[0].shape == (6, 6)
    # the query (24, 24) is a dense crop centre of its own image: cosine 1 exactly there
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (1, 1)
    assert maps[0].max() == pytest.approx(1.0, abs=0.02)
    assert (out / "similarity.png").is_file()


def test_random_baseline_has_the_same_network_and_other_weights(eve_checkpoint, gradient_images):
    trained = load_eve_model(eve_checkpoint)
    random = load_eve_model(None, like=eve_checkpoint, seed=3)
    again = load_eve_model(None, like=eve_checkpoint, seed=3)
    a, b, c = (m.backbone.state_dict() for m in (trained, random, again))
    assert a.keys() == b.keys()
    conv = next(k for k in a if k.endswith("weight") and a[k].ndim == 4)
    assert not torch.equal(a[conv], b[conv]) and torch.equal(b[conv], c[conv])
    assert random.name == "random" and random.input_size == trained.input_size


def test_bad_inputs_are_one_line_errors(eve_checkpoint, gradient_images, tmp_path, capsys):
    base = [
        "embed",
        "--model",
        str(eve_checkpoint),
        "--input",
        str(gradient_images),
        "--no-progress",
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x,y\na/im0.png,1,2\n")
    assert main([*base, "--out", str(tmp_path / "o1"), "--points", str(bad)]) == 2
    assert "lacks the column" in capsys.readouterr().err
    bad.write_text("image,x,y,size\nnope.png,1,2,8\n")
    assert main([*base, "--out", str(tmp_path / "o2"), "--points", str(bad)]) == 2
    assert "'nope.png' not found" in capsys.readouterr().err
    bad.write_text("image,x,y,size\na/im0.png,1,two,8\n")
    assert main([*base, "--out", str(tmp_path / "o3"), "--points", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o4"), "--similarity",
                 str(gradient_images / "a" / "im0.png"), "500", "5"]) == 2  # fmt: skip
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path / "o4" / "embeddings.npz").exists()  # checked before any embedding
    assert main(["embed", "--model", str(tmp_path), "--input", str(gradient_images),
                 "--out", str(tmp_path / "o5")]) == 2  # fmt: skip
    assert "no medfoundry checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="fine-tuned"):
        from medfoundry.zoo import save_checkpoint

        net = load_eve_model(eve_checkpoint).backbone
        save_checkpoint(tmp_path / "ft", net.state_dict(),
                        {"method": "finetune", "task": "classification", "backbone": net.config,
                         "input_size": 32, "classes": ["a", "b"]})  # fmt: skip
        load_eve_model(tmp_path / "ft")


def test_overwrite_drops_the_old_marker_before_writing(
    eve_checkpoint, gradient_images, tmp_path, monkeypatch
):
    import medfoundry.tasks.embed as embed_task

    out = tmp_path / "e"
    base = ["embed", "--model", str(eve_checkpoint), "--input", str(gradient_images)]
    base += ["--out", str(out), "--no-progress"]
    assert main(base) == 0
    assert (out / "embed.json").is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("map failed")

    monkeypatch.setattr(embed_task, "plot_embedding_map", broken)
    with pytest.raises(RuntimeError, match="map failed"):
        main([*base, "--overwrite"])
    # new embeddings beside the old embed.json would look finished: the marker went first
    assert not (out / "embed.json").exists()
    monkeypatch.undo()
    assert main(base) == 0  # an unfinished folder is taken without --overwrite
