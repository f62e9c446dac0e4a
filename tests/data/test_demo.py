"""The bundled demo and held-out datasets, and the script that builds them (run on synthetic
sources)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg_env.data import (
    available_datasets,
    demo_dataset,
    demo_heldout_dataset,
    load_dataset,
    load_npz,
)

DEMO_DIR = Path(str(resources.files("medseg_env.data").joinpath("demo")))
EXPECTED_SAMPLES = {"brain1": 6, "lung1": 3, "breast1": 3, "nuclei": 78}
HELDOUT_DIR = Path(str(resources.files("medseg_env.data").joinpath("demo_heldout")))
HELDOUT_SAMPLES = {"brain2": 3, "lung2": 6, "nuclei": 75}
HELDOUT_IMAGES = {"brain2": 3, "lung2": 6, "nuclei": 8}


@pytest.fixture(scope="module")
def demo():
    return demo_dataset()


def test_demo_counts_shapes_and_modalities(demo) -> None:
    assert Counter(s.source_id for s in demo) == EXPECTED_SAMPLES
    assert len(demo) == sum(EXPECTED_SAMPLES.values())
    assert demo.modalities == ("CT", "MR", "microscopy")
    for s in demo:
        side = 128 if s.modality == "microscopy" else 256
        assert s.image.shape == (side, side, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (side, side) and s.mask.dtype == bool
        assert s.mask.sum() >= (20 if s.modality == "microscopy" else 30)
        assert all(0 < v < 2 for v in s.spacing) or s.spacing == (1.0, 1.0)
        assert s.target == ("nucleus" if s.modality == "microscopy" else "tumour")
    by_source = {s.source_id: s.modality for s in demo}
    assert by_source == {"brain1": "MR", "lung1": "CT", "breast1": "MR", "nuclei": "microscopy"}


def test_demo_has_no_held_out_data(demo) -> None:
    assert not {"brain2", "lung2"} & {s.source_id for s in demo}
    rows = {int(m.group(1)) for s in demo if (m := re.match(r"nuclei_r(\d+)_c\d+/", s.sample_id))}
    assert rows == {0, 128}  # nuclei tiles from the top half (rows 0-255) only
    assert not [p for p in DEMO_DIR.iterdir() if re.match(r"(brain2|lung2)", p.name)]


def test_demo_files_small_and_consistent(demo) -> None:
    files = sorted(DEMO_DIR.glob("*.npz"))
    assert sum(p.stat().st_size for p in files) < 5_000_000
    manifest = json.loads((DEMO_DIR / "manifest.json").read_text())
    assert manifest["format"] == "npz"
    assert sorted(item["path"] for item in manifest["items"]) == [p.name for p in files]
    with np.load(files[0], allow_pickle=False) as npz:
        assert set(npz.files) == {"imgs", "gts", "spacing", "modality", "label_names", "source_id"}
        assert npz["gts"].dtype == np.uint16 and npz["spacing"].shape == (2,)
    for name in ("PROVENANCE.md", "LICENSE-pyradiomics.txt", "LICENSE-stardist.txt"):
        assert (DEMO_DIR / name).stat().st_size > 500
    assert "Harvard Medical School" in (DEMO_DIR / "LICENSE-pyradiomics.txt").read_text()
    # the same files load through the generic paths too
    assert [s.sample_id for s in load_dataset("demo")] == [s.sample_id for s in demo]
    assert len(load_npz(DEMO_DIR)) == len(demo)


def test_demo_lung_tumour_contrasts_with_lung(demo) -> None:
    for s in demo.filter(source_id="lung1"):
        grey = s.image[..., 0].astype(float)
        ring = ndimage.binary_dilation(s.mask, iterations=4) & ~s.mask
        assert grey[s.mask].mean() - grey[ring].mean() > 40


# --- the bundled held-out split ("demo-heldout") ------------------------------------------------


@pytest.fixture(scope="module")
def heldout():
    return demo_heldout_dataset()


def image_stem(sample_id: str) -> str:
    return sample_id.split("/", 1)[0]


def test_heldout_counts_shapes_and_modalities(heldout) -> None:
    assert heldout.name == "demo-heldout"
    assert Counter(s.source_id for s in heldout) == HELDOUT_SAMPLES
    images = {(s.source_id, image_stem(s.sample_id)) for s in heldout}
    assert Counter(source for source, _ in images) == HELDOUT_IMAGES
    assert heldout.modalities == ("CT", "MR", "microscopy")
    by_source = {s.source_id: s.modality for s in heldout}
    assert by_source == {"brain2": "MR", "lung2": "CT", "nuclei": "microscopy"}
    for s in heldout:
        side = 128 if s.modality == "microscopy" else 256
        assert s.image.shape == (side, side, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (side, side) and s.mask.dtype == bool
        assert s.mask.sum() >= (20 if s.modality == "microscopy" else 30)
        assert s.target == ("nucleus" if s.modality == "microscopy" else "tumour")


def test_heldout_shares_nothing_with_demo(demo, heldout) -> None:
    assert {s.source_id for s in heldout} - {"nuclei"} == {"brain2", "lung2"}
    assert not {"brain1", "lung1", "breast1"} & {s.source_id for s in heldout}
    rows = {
        int(m.group(1)) for s in heldout if (m := re.match(r"nuclei_r(\d+)_c\d+/", s.sample_id))
    }
    assert rows == {256, 384}  # nuclei tiles from the bottom half (rows 256-511) only
    assert not {s.sample_id for s in demo} & {s.sample_id for s in heldout}
    demo_files = {p.name for p in DEMO_DIR.glob("*.npz")}
    assert not demo_files & {p.name for p in HELDOUT_DIR.glob("*.npz")}

    def digests(ds):
        return {hashlib.sha256(s.image.tobytes()).hexdigest() for s in ds}

    assert len(digests(heldout)) == sum(HELDOUT_IMAGES.values())  # one per image, all different
    assert not digests(demo) & digests(heldout)  # no image in common


def test_heldout_files_and_registration(heldout) -> None:
    files = sorted(HELDOUT_DIR.glob("*.npz"))
    assert len(files) == sum(HELDOUT_IMAGES.values())
    assert sum(p.stat().st_size for p in files) < 5_000_000
    manifest = json.loads((HELDOUT_DIR / "manifest.json").read_text())
    assert manifest["name"] == "demo-heldout" and manifest["format"] == "npz"
    listed = [item["path"] for item in manifest["items"]]
    assert all((HELDOUT_DIR / path).is_file() for path in listed)
    assert sorted(listed) == [p.name for p in files]
    for name in ("PROVENANCE.md", "LICENSE-pyradiomics.txt", "LICENSE-stardist.txt"):
        assert (HELDOUT_DIR / name).stat().st_size > 500
        if name.startswith("LICENSE"):
            assert (HELDOUT_DIR / name).read_bytes() == (DEMO_DIR / name).read_bytes()
    assert "demo-heldout" in available_datasets()
    loaded = load_dataset("demo-heldout")
    assert loaded.name == "demo-heldout"
    assert [s.sample_id for s in loaded] == [s.sample_id for s in heldout]
    assert len(load_npz(HELDOUT_DIR)) == len(heldout)


# --- build_demo.py on synthetic stand-ins for the real sources ----------------------------------


def load_build_script(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("build_demo", DEMO_DIR / "build_demo.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_demo", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake_sources(root: Path) -> tuple[Path, Path]:
    nrrd = pytest.importorskip("nrrd")
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(1)
    pyrad = root / "pyradiomics" / "data"
    pyrad.mkdir(parents=True)
    header = {"space directions": np.diag([0.5, 0.6, 3.0])}
    for case, shape in {
        "brain1": (64, 64, 10),
        "lung1": (96, 96, 10),
        "breast1": (40, 20, 10),
    }.items():
        vol = rng.normal(-700 if case == "lung1" else 300, 50, shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[10:20, 5:15, 2:9] = 1
        vol[lab > 0] += 600
        nrrd.write(str(pyrad / f"{case}_image.nrrd"), vol, header)
        nrrd.write(str(pyrad / f"{case}_label.nrrd"), lab, header)
    images = root / "sd" / "stardist" / "data" / "images"
    images.mkdir(parents=True)
    mask = np.zeros((512, 512), np.uint16)
    for i, (r, c) in enumerate([(10, 10), (100, 300), (200, 60), (300, 300), (450, 450)], 1):
        mask[r : r + 12, c : c + 12] = i
    mask[126:130, 200:204] = 9  # 16 px, split over two tiles: both fragments dropped
    tifffile.imwrite(images / "img2d.tif", (mask > 0).astype(np.uint16) * 200 + 10)
    tifffile.imwrite(images / "mask2d.tif", mask)
    return root / "pyradiomics", root / "sd"


def test_build_script_splits_and_reproducibility(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build = load_build_script(monkeypatch)
    pyrad, sd = fake_sources(tmp_path)
    out = tmp_path / "out"
    args = ["--pyradiomics", str(pyrad), "--stardist", str(sd), "--out", str(out)]
    assert build.main(args) == 0
    assert "total" in capsys.readouterr().out
    ds = load_dataset(out / "manifest.json")
    counts = Counter(s.source_id for s in ds)
    assert counts == {"brain1": 6, "lung1": 6, "breast1": 6, "nuclei": 3}
    assert {s.image.shape for s in ds if s.modality != "microscopy"} == {(256, 256, 3)}
    assert ds.get("brain1_z002/tumour").spacing == pytest.approx((0.6 / 4, 0.5 / 4))
    first = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    assert build.main(args) == 0  # deterministic: byte-identical files
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == first

    held = tmp_path / "held"
    with pytest.raises(FileNotFoundError, match="brain2_image.nrrd"):
        build.main([*args[:-1], str(held), "--split", "heldout"])


def test_build_script_name_option_only_changes_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = load_build_script(monkeypatch)
    pyrad, sd = fake_sources(tmp_path)
    common = ["--pyradiomics", str(pyrad), "--stardist", str(sd)]
    assert build.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert build.main([*common, "--out", str(tmp_path / "b"), "--name", "demo-x"]) == 0
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab"]
    assert [m["name"] for m in manifests] == ["demo", "demo-x"]  # default: the split's name
    assert manifests[0]["items"] == manifests[1]["items"]
    npz = [{p.name: p.read_bytes() for p in (tmp_path / d).glob("*.npz")} for d in "ab"]
    assert npz[0] == npz[1] and npz[0]
    assert load_dataset(tmp_path / "b" / "manifest.json").name == "demo-x"
