"""prepare-2d: 2D corpus from mixed 2D images and volumes, its skip rules and its bad input."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medfoundry.cli import main
from medfoundry.data import corpus2d
from medfoundry.data.corpus2d import MANIFEST_COLUMNS, build_corpus_2d
from medfoundry.data.unlabeled2d import collect_images, load_images
from medfoundry.errors import InputError

N = 32  # slice side and corpus size: no resizing, so pixel values can be checked exactly


def _ct_volume() -> np.ndarray:
    """8 slices of 32²: 0-1 air + a thin table (3% of the slice), 2-6 a body, 7 constant."""
    yy, xx = np.mgrid[:N, :N]
    body = ((yy - 15) / 11.0) ** 2 + ((xx - 16) / 13.0) ** 2 < 1
    vol = np.full((8, N, N), -1000, np.int16)
    vol[:, 30, :] = 200  # the table, on every slice
    for k in range(2, 7):
        vol[k][body] = 40
        vol[k, 14:17, 15:18] = 700  # a vertebra
    vol[7] = -1024
    return vol


def _mr_volume() -> np.ndarray:
    """6 slices (i, j, k order for NIfTI): k=0 faint noise, 1-4 a bright head, 5 all zero."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:N, :N]
    head = ((yy - 16) / 12.0) ** 2 + ((xx - 16) / 10.0) ** 2 < 1
    vol = np.zeros((N, N, 6), np.float32)
    vol[:, :, 0] = rng.uniform(0, 20, (N, N))
    for k in range(1, 5):
        vol[:, :, k] = np.where(head, 800 + 50 * k, rng.uniform(0, 20, (N, N)))
    return vol


@pytest.fixture
def sources(tmp_path, write_dicom_series) -> list[Path]:
    xr = tmp_path / "xr"
    xr.mkdir()
    ramp = np.tile(np.linspace(0, 255, 60), (40, 1)).astype(np.uint8)  # 40 x 60, not square
    Image.fromarray(ramp).save(xr / "wide.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(xr / "flat.png")  # constant
    Image.fromarray(ramp.T.copy()).save(xr / "tall.jpg")
    (xr / "README.txt").write_text("not an image")
    vols = tmp_path / "vols"
    write_dicom_series(vols / "ct", _ct_volume(), spacing=(3.0, 0.8, 0.8))
    nib.save(nib.Nifti1Image(_mr_volume(), np.diag([1.0, 1.0, 4.0, 1.0])), vols / "mr.nii.gz")
    return [xr, vols]


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_corpus_counts_skips_and_manifest(tmp_path, sources):
    out = tmp_path / "corpus"
    summary = build_corpus_2d(sources, out, size=N, ct_windows=("lung", "wide"), progress=False)
    xr, vols = summary["sources"]["xr"], summary["sources"]["vols"]
    assert (xr["inputs_2d"], xr["images"], xr["skipped"], xr["ignored_files"]) == (
        3,
        2,
        {"constant": 1},
        1,
    )
    # the DICOM folder is one volume, not 8 images; plus the NIfTI
    assert vols["volumes"] == 2 and vols["inputs_2d"] == 0 and vols["slices"] == 14
    assert vols["inputs_by_modality"] == {"CT": 1, "unknown": 1}
    # CT: 2 air+table slices near-empty, 1 constant; MR: 1 noise-only near-empty, 1 constant
    assert vols["skipped"] == {"constant": 2, "near_empty": 3}
    assert vols["images_by_modality"] == {"CT": 5 * 2, "unknown": 4}
    assert summary["images"] == 16
    assert json.loads((out / "corpus.json").read_text())["totals"]["skipped"] == {
        "constant": 3,
        "near_empty": 3,
    }
    rows = _manifest(out)
    assert len(rows) == 16 and list(rows[0]) == MANIFEST_COLUMNS
    ct_rows = [r for r in rows if r["modality"] == "CT"]
    assert {r["slice_index"] for r in ct_rows} == {"2", "3", "4", "5", "6"}
    assert {r["window"] for r in ct_rows} == {"lung", "wide"}
    assert ct_rows[0]["original_shape"] == "8x32x32" and ct_rows[0]["spacing"] == "3x0.8x0.8"
    assert ct_rows[0]["modality_from"] == "tag" and ct_rows[0]["axis"] == "axial"
    for r in rows:
        with Image.open(out / r["file"]) as im:
            assert im.mode == "L" and im.size == (N, N)


def test_ct_windows_map_hu_to_8_bit(tmp_path, sources):
    out = tmp_path / "corpus"
    build_corpus_2d(sources[1:], out, size=N, ct_windows=("lung", "wide"), progress=False)
    lung = np.asarray(Image.open(out / "vols" / "ct_axial0003_lung.png"))
    wide = np.asarray(Image.open(out / "vols" / "ct_axial0003_wide.png"))
    # air (-1000 HU): lung window -1350..150 -> 350/1500; wide -1000..1000 -> 0
    assert abs(int(lung[0, 0]) - 350 / 1500 * 255) <= 0.5 and wide[0, 0] == 0
    assert wide[8, 16] == round(1040 / 2000 * 255)  # soft tissue, 40 HU
    assert lung[8, 16] == round(1390 / 1500 * 255)
    assert lung[15, 16] == 255 and wide[15, 16] == round(1700 / 2000 * 255)  # bone, 700 HU
    # axial slice in the radiological view: the table (posterior) is at the bottom row 30
    assert wide[30].min() == round(1200 / 2000 * 255)


def test_aspect_kept_by_padding(tmp_path, sources):
    out = tmp_path / "corpus"
    build_corpus_2d(sources[:1], out, size=N, progress=False)
    wide = np.asarray(Image.open(out / "xr" / "wide.png"))  # 40 x 60 -> 21 x 32 + padding
    assert (wide[:5] == 0).all() and (wide[-5:] == 0).all()  # padded with the minimum
    assert wide[N // 2, -1] > 240 and wide[N // 2, 0] < 15  # the ramp spans the width
    tall = np.asarray(Image.open(out / "xr" / "tall.png"))
    assert (tall[:, :5] == 0).all() and tall[-1, N // 2] > 240


def test_corpus_is_a_pretraining_image_folder(tmp_path, sources):
    out = tmp_path / "corpus"
    build_corpus_2d(sources, out, size=N, progress=False)
    paths = collect_images([out])
    assert len(paths) == len(_manifest(out)) and all(p.suffix == ".png" for p in paths)
    images = load_images(paths, size=16, progress=False)
    assert images.shape == (len(paths), 1, 16, 16) and bool(images.isfinite().all())


def test_unknown_volume_is_ct_when_hu_like_unless_told(tmp_path):
    src = tmp_path / "nii"
    src.mkdir()
    vol = _ct_volume().transpose(2, 1, 0).astype(np.float32)  # (i, j, k)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), src / "ct.nii.gz")
    out = tmp_path / "a"
    summary = build_corpus_2d([src], out, size=N, progress=False)
    assert summary["totals"]["images_by_modality"] == {"CT": 5}
    assert {r["modality_from"] for r in _manifest(out)} == {"hu_range"}
    told = build_corpus_2d([src], tmp_path / "b", size=N, modality="MR", progress=False)
    assert "MR" in told["totals"]["images_by_modality"]
    assert {r["modality_from"] for r in _manifest(tmp_path / "b")} == {"option"}


def test_coronal_axis_puts_superior_at_the_top(tmp_path):
    src = tmp_path / "nii"
    src.mkdir()
    vol = np.zeros((N, N, 8), np.float32)  # RAS identity: k is superior
    vol[:, :, :4] = 100.0  # inferior half bright
    nib.save(nib.Nifti1Image(vol, np.eye(4)), src / "v.nii.gz")
    out = tmp_path / "c"
    build_corpus_2d([src], out, size=N, axis="coronal", progress=False)
    image = np.asarray(Image.open(out / "nii" / "v_coronal0010.png"))  # 8 x 32 slice
    # 8 x 32 slice padded by 12 rows on each side; inferior (k < 4) is the lower half
    assert np.flatnonzero(image[:, N // 2] > 0).tolist() == [16, 17, 18, 19]


@pytest.mark.parametrize(
    "make, match",
    [
        ("empty", "no readable image, volume or DICOM files"),
        ("nan", "NaN"),
        ("nopixels", "no pixel data"),
        ("ct_no_rescale", "cannot convert to Hounsfield units"),
        ("all_skipped", "every image/slice was skipped"),
    ],
)
def test_bad_sources_are_errors_naming_the_file(tmp_path, write_dicom_series, make, match):
    src = tmp_path / "src"
    src.mkdir()
    named = src
    if make == "empty":
        (src / "notes.txt").write_text("nothing here")
    elif make == "nan":
        vol = np.ones((4, 4, 4), np.float32)
        vol[1, 2, 3] = np.nan
        named = src / "nan.nii.gz"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), named)
    elif make == "nopixels":
        import pydicom

        paths = write_dicom_series(src / "s", _ct_volume()[:3])
        ds = pydicom.dcmread(paths[0])
        del ds.PixelData
        ds.save_as(paths[0])
        named = paths[0]
    elif make == "ct_no_rescale":
        write_dicom_series(src / "s", _ct_volume()[:3], rescale=False)
        named = src / "s"  # the first slice file read
    else:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), src / "z.nii")
    with pytest.raises(InputError, match=match) as e:
        build_corpus_2d([src], tmp_path / "out", size=N, progress=False)
    assert str(named) in str(e.value)


def test_output_folder_rules(tmp_path, sources):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        build_corpus_2d(sources, out, size=N, progress=False)
    with pytest.raises(InputError, match="holds no corpus.json"):
        build_corpus_2d(sources, out, size=N, overwrite=True, progress=False)
    assert (out / "mine.txt").exists()
    with pytest.raises(InputError, match="inside the source"):
        build_corpus_2d(sources, sources[0] / "corpus", size=N, progress=False)
    fresh = tmp_path / "fresh"
    build_corpus_2d(sources[:1], fresh, size=N, progress=False)
    summary = build_corpus_2d(sources[:1], fresh, size=16, overwrite=True, progress=False)
    assert summary["settings"]["size"] == 16 and len(_manifest(fresh)) == summary["images"]


def test_cli_prepare_2d(tmp_path, sources, capsys):
    out = tmp_path / "cli"
    argv = ["prepare-2d", "--source", str(sources[1]), "--out", str(out), "--size", str(N)]
    code = main([*argv, "--ct-window", "bone", "--ct-window=-600,1500", "--no-progress"])
    assert code == 0
    assert "corpus:" in capsys.readouterr().out
    windows = {r["window"] for r in _manifest(out) if r["modality"] == "CT"}
    assert windows == {"bone", "L-600W1500"}
    assert main([*argv[:-4], "--out", str(tmp_path / "x"), "--ct-window", "nope"]) == 2
    assert "unknown CT window 'nope'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = main(["prepare-2d", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "y")])
    assert code == 2
    assert str(tmp_path / "empty") in capsys.readouterr().err


def test_real_ct_and_mr_series(tmp_path, shared_data):
    ct = shared_data / "ct_abdomen" / "dicom"
    mr = shared_data / "dicom" / "brain_mr_t1post"
    if not (ct.is_dir() and mr.is_dir()):
        pytest.skip("real DICOM series not present")
    summary = build_corpus_2d([ct, mr], tmp_path / "real", size=64, progress=False)
    assert summary["sources"]["dicom"]["images_by_modality"] == {"CT": 20}
    assert summary["sources"]["brain_mr_t1post"]["images_by_modality"] == {"MR": 22}
    assert summary["totals"]["skipped"] == {}  # every slice holds anatomy


# --- completeness (issue #14) ---------------------------------------------------------------
def _stopped_build(tmp_path, sources, monkeypatch, after: int = 3) -> Path:
    """A corpus whose build was stopped (as by a kill) after ``after`` PNGs."""
    out = tmp_path / "stopped"
    write = corpus2d._CorpusWriter.write

    def stop_after(self, *args, **kwargs):
        if len(self.rows) == after:
            raise KeyboardInterrupt
        write(self, *args, **kwargs)

    monkeypatch.setattr(corpus2d._CorpusWriter, "write", stop_after)
    with pytest.raises(KeyboardInterrupt):
        build_corpus_2d(sources, out, size=N, progress=False)
    monkeypatch.undo()
    assert len(list(out.rglob("*.png"))) == after
    return out


def test_stopped_build_is_refused_then_cleaned_by_overwrite(
    tmp_path, sources, monkeypatch, tiny_pretrain_args, capsys
):
    out = _stopped_build(tmp_path, sources, monkeypatch)
    with pytest.raises(InputError, match="unfinished 2D corpus.*--overwrite") as e:
        collect_images([out])
    assert str(out) in str(e.value)
    assert main(tiny_pretrain_args("adam", out, tmp_path / "run")) == 2
    assert "unfinished 2D corpus" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    (out / "corpus.json").unlink()  # as a build from before the marker, or a lost corpus.json
    with pytest.raises(InputError, match="looks like a prepare-2d corpus but has no corpus.json"):
        collect_images([out])
    with pytest.raises(InputError, match="looks like a prepare-2d corpus"):
        collect_images([next(out.iterdir())])  # one source's sub-folder: no corpus.json above
    summary = build_corpus_2d(sources, out, size=N, overwrite=True, progress=False)
    assert len(collect_images([out])) == summary["images"] > 3
    assert len(collect_images([out / "xr"])) == 2  # a complete corpus's sub-folder is fine


def test_overwrite_cleans_a_stopped_build_from_before_the_markers(tmp_path, sources):
    out = tmp_path / "old"
    for k in range(3):  # what an older prepare-2d left when killed: gray square PNGs only
        (out / "xr").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((N, N), 10 * k, np.uint8)).save(out / "xr" / f"a{k}.png")
    (out / "xr" / ".a3.png.123.abc.tmp").write_bytes(b"half")
    build_corpus_2d(sources[:1], out, size=N, overwrite=True, progress=False)
    assert not (out / "xr" / "a0.png").exists() and (out / "corpus.json").is_file()


@pytest.mark.parametrize("extra", ["top_level_png", "rgb_png", "other_file", "two_sizes"])
def test_overwrite_never_deletes_a_folder_that_is_not_a_corpus(tmp_path, sources, extra):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((N, N), np.uint8)).save(folder / "sub" / "keep.png")
    if extra == "top_level_png":
        Image.fromarray(np.zeros((N, N), np.uint8)).save(folder / "top.png")
    elif extra == "rgb_png":
        Image.fromarray(np.zeros((N, N, 3), np.uint8)).save(folder / "sub" / "rgb.png")
    elif extra == "other_file":
        (folder / "sub" / "notes.txt").write_text("mine")
    else:
        Image.fromarray(np.zeros((N + 1, N + 1), np.uint8)).save(folder / "sub" / "big.png")
    with pytest.raises(InputError, match="refusing to delete it"):
        build_corpus_2d(sources[:1], folder, size=N, overwrite=True, progress=False)
    assert (folder / "sub" / "keep.png").is_file()
    assert not (folder / "corpus.json").exists()


def test_plain_image_folder_is_not_taken_for_a_corpus(xray_folder):
    assert len(collect_images([xray_folder])) == 12


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_corpus_with_a_missing_or_resized_file_is_refused_naming_it(tmp_path, sources, damage):
    out = tmp_path / "corpus"
    build_corpus_2d(sources, out, size=N, progress=False)
    bad = out / _manifest(out)[5]["file"]
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(InputError, match="missing" if damage == "missing" else "bytes.*damaged"):
        collect_images([out])
    with pytest.raises(InputError) as e:
        collect_images([out])
    assert str(e.value).startswith(str(bad))


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8", reason="needs a UTF-8 file system")
def test_a_non_utf8_file_name_is_kept_in_the_manifest_and_read_back(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    gray = np.tile(np.linspace(0, 255, N), (N, 1)).astype(np.uint8)
    Image.fromarray(gray).save(src / "ok.png")
    odd = os.fsdecode(os.fsencode(src) + b"/caf\xe9.png")  # Latin-1 name: not UTF-8
    Image.fromarray(gray.T.copy()).save(odd)
    out = tmp_path / "corpus"
    assert build_corpus_2d([src], out, size=N, progress=False)["images"] == 2
    assert b"caf\xe9.png" in (out / "manifest.csv").read_bytes()  # the name's own bytes
    assert len(collect_images([out])) == 2  # the manifest check reads it back
