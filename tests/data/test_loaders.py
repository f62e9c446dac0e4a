"""Loaders, intensity mapping, Dataset and manifests, on small files written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg_env.data import (
    Dataset,
    DatasetNotFoundError,
    Sample,
    load_dataset,
    load_folder,
    load_manifest,
    load_nifti,
    load_npz,
    register_dataset,
)
from medseg_env.data import manifest as manifest_module
from medseg_env.data.intensity import (
    WINDOW_PRESETS,
    apply_window,
    normalize_percentile,
    resolve_window,
    to_rgb_uint8,
)

RNG = np.random.default_rng(0)
ZOOMS = (0.8, 0.9, 2.5)


# --- helpers -------------------------------------------------------------------------------------


def label_volume() -> np.ndarray:
    """(20, 24, 6) labels: 1 in z 1-3, 2 in z 2-4, 3 tiny (4 px) in z 0."""
    lab = np.zeros((20, 24, 6), dtype=np.uint8)
    lab[2:8, 3:9, 1:4] = 1
    lab[10:16, 12:20, 2:5] = 2
    lab[0:2, 0:2, 0] = 3
    return lab


def write_nifti(path: Path, data: np.ndarray, zooms=ZOOMS) -> Path:
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    nib.save(img, str(path))
    return path


@pytest.fixture
def nifti_pair(tmp_path: Path) -> tuple[Path, Path]:
    lab = label_volume()
    ct = np.full(lab.shape, -1000, dtype=np.int16)  # air
    ct[lab == 1] = 40  # soft tissue, at the soft-tissue window level
    ct[lab == 2] = 1000  # bone, above the window
    image = write_nifti(tmp_path / "case1.nii.gz", ct)
    label = write_nifti(tmp_path / "case1_label.nii.gz", lab)
    return image, label


def expected_targets(lab: np.ndarray, axis: int, min_area: int) -> set[tuple[int, int]]:
    """(slice, value) pairs that should become samples, computed independently of the loader."""
    out = set()
    for k in range(lab.shape[axis]):
        sl = np.take(lab, k, axis=axis)
        for v in np.unique(sl):
            if v and (sl == v).sum() >= min_area:
                out.add((k, int(v)))
    return out


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# --- intensity -----------------------------------------------------------------------------------


def test_window_presets_and_errors() -> None:
    for name in ("soft_tissue", "lung", "bone", "brain", "abdomen", "mediastinum"):
        assert name in WINDOW_PRESETS
    assert resolve_window("soft_tissue") == (40.0, 400.0)
    assert resolve_window("lung") == (-600.0, 1500.0)
    assert resolve_window("brain") == (40.0, 80.0)
    assert resolve_window((10, 20)) == (10.0, 20.0)
    with pytest.raises(ValueError, match="unknown CT window preset 'spleen'.*lung.*soft_tissue"):
        resolve_window("spleen")
    with pytest.raises(ValueError, match="width > 0"):
        resolve_window((0, 0))


def test_apply_window_maps_level_and_edges() -> None:
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = apply_window(hu, "soft_tissue")  # [-160, 240] -> [0, 255]
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_percentile_normalisation() -> None:
    values = np.arange(1000, dtype=np.float64)
    values[0], values[-1] = -1e6, 1e6  # outliers must not squash the range
    out = normalize_percentile(values)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert 100 < out[500] < 155
    assert not normalize_percentile(np.full((4, 4), 7.0)).any()  # constant -> zeros
    assert not normalize_percentile(np.full((4, 4), np.nan)).any()


@pytest.mark.parametrize(
    ("array", "expected_shape"),
    [
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000, (3, 4, 3)),
        (np.linspace(0, 1, 12).reshape(3, 4), (3, 4, 3)),
        (np.ones((3, 4, 1), dtype=np.int32), (3, 4, 3)),
        (np.zeros((3, 4, 4), dtype=np.uint8), (3, 4, 3)),
        (np.eye(3, dtype=bool), (3, 3, 3)),
    ],
)
def test_to_rgb_uint8(array: np.ndarray, expected_shape: tuple[int, ...]) -> None:
    out = to_rgb_uint8(array)
    assert out.shape == expected_shape and out.dtype == np.uint8


def test_to_rgb_uint8_keeps_uint8_rgb_and_rejects_3d() -> None:
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb), rgb)
    grey = to_rgb_uint8(np.arange(10, dtype=np.uint16).reshape(2, 5))
    assert np.array_equal(grey[..., 0], grey[..., 2]) and grey.max() == 255
    with pytest.raises(ValueError, match="2D grey"):
        to_rgb_uint8(np.zeros((4, 5, 6)))


# --- Dataset -------------------------------------------------------------------------------------


def make_sample(sample_id: str, modality: str = "CT", target: str = "t") -> Sample:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    return Sample(np.zeros((4, 4, 3), np.uint8), mask, target, modality, "src", sample_id)


def test_dataset_basics() -> None:
    ds = Dataset([make_sample("a"), make_sample("b", "MR"), make_sample("c", target="u")], "x")
    assert len(ds) == 3 and ds.name == "x"
    assert ds.modalities == ("CT", "MR")
    assert ds.index_of("b") == 1 and ds[1].sample_id == "b"
    assert [s.sample_id for s in ds.filter(modality="CT")] == ["a", "c"]
    assert [s.sample_id for s in ds.filter(target=["u"])] == ["c"]
    assert [s.sample_id for s in ds.filter(lambda s: s.sample_id > "a")] == ["b", "c"]
    assert isinstance(ds[:2], Dataset) and len(ds[:2]) == 2
    both = ds + Dataset([make_sample("d")], "y")
    assert len(both) == 4 and both.index_of("d") == 3 and ds[0] in both
    with pytest.raises(KeyError, match="'zz'"):
        ds.index_of("zz")
    with pytest.raises(ValueError, match="matched no sample"):
        ds.filter(modality="PET")


def test_dataset_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="duplicated sample_id 'a'"):
        Dataset([make_sample("a"), make_sample("a")], "dup")
    with pytest.raises(ValueError, match="'nothing' has no samples"):
        Dataset([], "nothing")
    ds = Dataset([make_sample("a")], "one")
    with pytest.raises(ValueError, match="duplicated"):
        ds.concat(ds)


# --- NIfTI ---------------------------------------------------------------------------------------


def test_nifti_one_sample_per_label_and_slice(nifti_pair: tuple[Path, Path]) -> None:
    image, label = nifti_pair
    ds = load_nifti(image, label, label_map={1: "liver"})
    lab = label_volume()
    got = {(int(s.sample_id.split("/")[1][1:]), s.target) for s in ds}
    want = {(z, "liver" if v == 1 else f"label_{v}") for z, v in expected_targets(lab, 2, 16)}
    assert got == want and len(ds) == 6  # label 3 (4 px) skipped by min_area=16
    s = ds.get("case1/z002/label_2")
    assert s.image.shape == (20, 24, 3) and s.image.dtype == np.uint8
    assert s.mask.dtype == bool and np.array_equal(s.mask, lab[:, :, 2] == 2)
    assert s.spacing == pytest.approx((0.8, 0.9))
    assert s.modality == "CT" and s.source_id == "case1"
    # default window for CT is soft tissue: 40 HU -> mid grey, 1000 HU -> white, air -> black
    liver = ds.get("case1/z002/liver")
    assert liver.image[liver.mask][:, 0].tolist() == [128] * int(liver.mask.sum())
    assert (s.image[s.mask] == 255).all() and s.image[0, 23, 0] == 0


def test_nifti_min_area_axis_transpose_and_steps(nifti_pair: tuple[Path, Path]) -> None:
    image, label = nifti_pair
    lab = label_volume()
    assert "label_3" in load_nifti(image, label, min_area=4).targets  # label 3 has 4 px
    assert "label_3" not in load_nifti(image, label, min_area=5).targets

    ds0 = load_nifti(image, label, axis=0)
    assert {(int(s.sample_id.split("/")[1][1:]), int(s.target[6:])) for s in ds0} == (
        expected_targets(lab, 0, 16)
    )
    s0 = ds0[0]
    assert s0.image.shape == (24, 6, 3) and s0.spacing == pytest.approx((0.9, 2.5))
    assert s0.sample_id.split("/")[1].startswith("x")

    dst = load_nifti(image, label, transpose=True)
    st = dst.get("case1/z002/label_2")
    assert st.image.shape == (24, 20, 3) and st.spacing == pytest.approx((0.9, 0.8))
    assert np.array_equal(st.mask, (lab[:, :, 2] == 2).T)

    stepped = load_nifti(image, label, slice_step=2)
    assert {s.sample_id.split("/")[1] for s in stepped} == {"z002", "z004"}
    capped = load_nifti(image, label, max_slices_per_target=1)
    assert sorted(s.target for s in capped) == ["label_1", "label_2"]


def test_nifti_mr_percentiles_and_custom_window(tmp_path: Path) -> None:
    lab = label_volume()
    mr = RNG.normal(500, 100, lab.shape).astype(np.float32)
    image = write_nifti(tmp_path / "mr.nii", mr)
    label = write_nifti(tmp_path / "mr_seg.nii", lab)
    ds = load_nifti(image, label, modality="MR")  # "auto" -> percentiles for MR
    assert ds[0].modality == "MR" and ds[0].image.max() > 200 and ds[0].image.min() < 50
    custom = load_nifti(image, label, modality="MR", window=(500, 10))
    # a 10-wide window around the mean saturates most pixels, half black and half white
    assert (custom[0].image == 0).mean() > 0.3 and (custom[0].image == 255).mean() > 0.3


def test_nifti_errors_name_the_file(tmp_path: Path, nifti_pair: tuple[Path, Path]) -> None:
    image, label = nifti_pair
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_nifti(missing, label)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(RNG.bytes(2000))
    with pytest.raises(ValueError, match="cannot read NIfTI image .*corrupt.nii.gz"):
        load_nifti(corrupt, label)
    small = write_nifti(tmp_path / "small.nii.gz", np.zeros((20, 24, 5), np.uint8))
    with pytest.raises(ValueError, match=r"shape mismatch.*case1.nii.gz.*small.nii.gz"):
        load_nifti(image, small)
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros((20, 24, 6), np.uint8))
    with pytest.raises(ValueError, match="no target in .*empty.nii.gz"):
        load_nifti(image, empty)
    with pytest.raises(ValueError, match="unknown CT window preset 'spleen'.*soft_tissue"):
        load_nifti(image, label, window="spleen")
    floaty = write_nifti(tmp_path / "floaty.nii.gz", np.full((20, 24, 6), 0.5, np.float32))
    with pytest.raises(ValueError, match="floaty.nii.gz: label map has non-integer"):
        load_nifti(image, floaty)


# --- npz -----------------------------------------------------------------------------------------


def test_npz_2d_grey_with_metadata(tmp_path: Path) -> None:
    gts = np.zeros((32, 40), np.uint16)
    gts[2:10, 2:10] = 1
    gts[20:30, 20:30] = 7
    imgs = RNG.integers(0, 256, (32, 40), dtype=np.uint8)
    path = tmp_path / "slice.npz"
    np.savez_compressed(
        path,
        imgs=imgs,
        gts=gts,
        spacing=np.array([0.5, 0.7]),
        modality="MR",
        label_names=json.dumps({"1": "lesion"}),
    )
    ds = load_npz(path)
    assert [s.sample_id for s in ds] == ["slice/lesion", "slice/label_7"]
    s = ds[0]
    assert s.modality == "MR" and s.spacing == (0.5, 0.7) and s.source_id == "slice"
    assert np.array_equal(s.image[..., 1], imgs)  # uint8 is used as is
    assert np.array_equal(ds[1].mask, gts == 7)
    assert load_npz(path, modality="CT", label_map={7: "cyst"})[1].target == "cyst"


def test_npz_rgb_and_instances(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    gts = np.zeros((30, 30), np.uint16)
    gts[0:6, 0:6], gts[10:16, 10:16], gts[20:26, 20:26] = 3, 4, 5
    names = json.dumps({"3": "nucleus", "4": "nucleus", "5": "nucleus"})
    np.savez_compressed(tmp_path / "tile.npz", imgs=rgb, gts=gts, label_names=names)
    ds = load_npz(tmp_path / "tile.npz")
    assert [s.sample_id for s in ds] == ["tile/nucleus_3", "tile/nucleus_4", "tile/nucleus_5"]
    assert {s.target for s in ds} == {"nucleus"} and ds[0].modality == "unknown"
    assert np.array_equal(ds[0].image, rgb)


def test_npz_3d_ct_and_directory(tmp_path: Path) -> None:
    lab = np.moveaxis(label_volume(), 2, 0)  # (D, H, W)
    ct = np.where(lab == 1, 40, -1000).astype(np.int16)
    np.savez_compressed(
        tmp_path / "b_vol.npz", imgs=ct, gts=lab, spacing=np.array([2.5, 0.8, 0.9]), modality="CT"
    )
    two_d = np.zeros((20, 24), np.uint8)
    two_d[:8, :8] = 1
    np.savez_compressed(tmp_path / "a_img.npz", imgs=np.zeros((20, 24), np.uint8), gts=two_d)
    (tmp_path / "notes.txt").write_text("ignored")
    vol = load_npz(tmp_path / "b_vol.npz")
    assert len(vol) == len(expected_targets(label_volume(), 2, 16)) == 6
    s = vol.get("b_vol/z001/label_1")
    assert s.spacing == (0.8, 0.9) and s.image.shape == (20, 24, 3)
    assert (s.image[s.mask] == 128).all() and (s.image[~s.mask] == 0).all()  # soft-tissue window
    assert len(load_npz(tmp_path / "b_vol.npz", max_slices_per_target=2)) == 4
    both = load_npz(tmp_path)
    assert both[0].sample_id == "a_img/label_1" and len(both) == 7 and both.name == tmp_path.name


def test_npz_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    gts = np.zeros((8, 8), np.uint8)
    gts[:5, :5] = 1
    np.savez(good, imgs=np.zeros((8, 8), np.uint8), gts=gts)

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(RNG.bytes(500))
    with pytest.raises(ValueError, match="cannot read npz file .*corrupt.npz"):
        load_npz(corrupt)
    with pytest.raises(ValueError, match="corrupt.npz"):
        load_npz(tmp_path)  # one bad file fails the whole directory: nothing half-loaded
    corrupt.unlink()

    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nokey.npz", imgs=np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"nokey.npz: missing key\(s\) \['gts'\]"):
        load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", imgs=np.zeros((8, 9)), gts=gts)
    with pytest.raises(ValueError, match=r"shape.npz: imgs \(8, 9\) and gts \(8, 8\) do not match"):
        load_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "empty.npz", imgs=np.zeros((8, 8)), gts=np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no target in .*empty.npz"):
        load_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "pickled.npz", imgs=np.array([{"a": 1}], dtype=object), gts=gts)
    with pytest.raises(ValueError, match="pickled.npz"):
        load_npz(tmp_path / "pickled.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="plain.npz: .*not an .npz archive"):
        load_npz(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="unknown CT window preset"):
        load_npz(good, window="nope")


# --- folders -------------------------------------------------------------------------------------


def two_label_mask(shape=(24, 32)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:10, 2:10] = 1
    mask[12:20, 15:30] = 2
    return mask


def test_folder_png_8bit_16bit_rgb_and_tiff(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    grey8 = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
    ramp16 = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 50).astype(np.uint16)
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_png(images / "a_grey8.png", grey8)
    write_png(images / "b_grey16.png", ramp16)
    write_png(images / "c_rgb.jpg", rgb)
    tifffile.imwrite(images / "d_tiff.tif", ramp16)
    for stem in ("a_grey8", "b_grey16", "c_rgb"):
        write_png(masks / f"{stem}.png", two_label_mask())
    tifffile.imwrite(masks / "d_tiff.tiff", two_label_mask().astype(np.uint16))

    ds = load_folder(images, masks, modality="microscopy", label_map={2: "cell"})
    assert len(ds) == 8 and ds.modalities == ("microscopy",)
    assert ds.source_ids == ("a_grey8", "b_grey16", "c_rgb", "d_tiff")
    a = ds.get("a_grey8/label_1")
    assert np.array_equal(a.image[..., 0], grey8) and np.array_equal(a.mask, two_label_mask() == 1)
    assert ds.get("a_grey8/cell").target == "cell"
    b = ds.get("b_grey16/cell").image[..., 0]
    assert b[0, 0] == 0 and b[-1, -1] == 255 and (np.diff(b.ravel().astype(int)) >= 0).all()
    assert ds.get("c_rgb/cell").image.shape == (24, 32, 3)  # JPEG: lossy, so shape only
    assert np.array_equal(ds.get("d_tiff/cell").image, b[..., None].repeat(3, axis=2))


def test_folder_binary_mask_and_suffix(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    write_png(tmp_path / "img" / "x.png", np.zeros((16, 16, 3), np.uint8))
    binary = np.zeros((16, 16), np.uint8)
    binary[4:12, 4:12] = 255
    write_png(tmp_path / "lbl" / "x_mask.png", binary)
    ds = load_folder(tmp_path / "img", tmp_path / "lbl", mask_suffix="_mask")
    assert [s.sample_id for s in ds] == ["x/label_255"] and ds[0].mask.sum() == 64
    named = load_folder(
        tmp_path / "img", tmp_path / "lbl", mask_suffix="_mask", label_map={255: "lesion"}
    )
    assert named[0].target == "lesion"


def test_folder_errors(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    write_png(images / "a.png", np.zeros((24, 32), np.uint8))
    write_png(masks / "a.png", two_label_mask())
    write_png(images / "lonely.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="no mask .* for image.*lonely.png"):
        load_folder(images, masks)
    (images / "lonely.png").unlink()
    write_png(masks / "orphan.png", two_label_mask())
    with pytest.raises(FileNotFoundError, match="no image .* for mask.*orphan.png"):
        load_folder(images, masks)
    (masks / "orphan.png").unlink()

    (images / "broken.png").write_bytes(RNG.bytes(300))
    write_png(masks / "broken.png", two_label_mask())
    with pytest.raises(ValueError, match="cannot read image file .*broken.png"):
        load_folder(images, masks)
    write_png(images / "broken.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch.*broken.png.*\(10, 10\)"):
        load_folder(images, masks)
    write_png(images / "broken.png", np.zeros((24, 32), np.uint8))
    write_png(masks / "broken.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(ValueError, match="no target in mask .*broken.png"):
        load_folder(images, masks)
    assert len(load_folder(images, masks, skip_empty=True)) == 2
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[:5, :5] = (255, 0, 0)
    write_png(masks / "broken.png", colour)
    with pytest.raises(ValueError, match="broken.png is a colour image"):
        load_folder(images, masks)
    with pytest.raises(FileNotFoundError, match="images directory not found"):
        load_folder(tmp_path / "nothing", masks)


# --- manifests and load_dataset ------------------------------------------------------------------


def test_manifest_nifti(tmp_path: Path, nifti_pair: tuple[Path, Path]) -> None:
    manifest = {
        "name": "tiny",
        "format": "nifti",
        "modality": "CT",
        "label_map": {"1": "liver", "2": "bone"},
        "items": [
            {"image": "case1.nii.gz", "label": "case1_label.nii.gz"},
            {
                "image": "case1.nii.gz",
                "label": "case1_label.nii.gz",
                "id": "again",
                "window": [0, 100],
                "max_slices_per_target": 1,
            },
        ],
    }
    path = tmp_path / "sub" / "m.json"
    path.parent.mkdir()
    for item in manifest["items"]:  # paths relative to the manifest's folder
        item["image"], item["label"] = f"../{item['image']}", f"../{item['label']}"
    path.write_text(json.dumps(manifest))
    ds = load_manifest(path)
    assert ds.name == "tiny" and len(ds) == 6 + 2
    # max_slices_per_target=1: the first of equally large slices, named from the top label_map
    assert {s.sample_id for s in ds if s.source_id == "again"} == {
        "again/z001/liver",
        "again/z002/bone",
    }
    liver = ds.get("again/z001/liver")
    assert (liver.image[liver.mask] == 230).all()  # item window [0, 100]: 40 HU -> 229.5
    assert (ds.get("case1/z001/liver").image[liver.mask] == 128).all()  # default soft tissue
    assert load_dataset(path).name == "tiny"


def test_manifest_errors(tmp_path: Path, nifti_pair: tuple[Path, Path]) -> None:
    base = {"format": "nifti", "items": [{"image": "case1.nii.gz", "label": "case1_label.nii.gz"}]}
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps(
            {**base, "items": [*base["items"], {"image": "gone.nii.gz", "label": "x.nii.gz"}]}
        )
    )
    with pytest.raises(FileNotFoundError, match="m.json: missing item.*gone.nii.gz.*x.nii.gz"):
        load_manifest(path)
    path.write_text(json.dumps({**base, "windw": "lung"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['windw'\]"):
        load_manifest(path)
    path.write_text(json.dumps({**base, "format": "dicom"}))
    with pytest.raises(ValueError, match="format must be one of"):
        load_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="m.json is not valid"):
        load_manifest(path)
    path.write_text(json.dumps({**base, "window": "spleen"}))
    with pytest.raises(ValueError, match="unknown CT window preset"):
        load_manifest(path)


def test_load_dataset_dispatch(tmp_path: Path, nifti_pair: tuple[Path, Path]) -> None:
    image, label = nifti_pair
    by_pair = load_dataset((image, label))
    assert load_dataset(by_pair) is by_pair
    assert len(load_dataset(image)) == len(by_pair)  # finds case1_label.nii.gz next to it

    npz_dir = tmp_path / "npzs"
    npz_dir.mkdir()
    gts = np.zeros((8, 8), np.uint8)
    gts[:5, :5] = 1
    np.savez(npz_dir / "one.npz", imgs=np.zeros((8, 8), np.uint8), gts=gts)
    assert load_dataset(npz_dir / "one.npz", modality="MR")[0].modality == "MR"
    assert len(load_dataset(npz_dir)) == 1

    register_dataset("mine", lambda: by_pair)
    try:
        assert load_dataset("mine") is by_pair
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("mine", lambda: by_pair)
        with pytest.raises(DatasetNotFoundError, match="'nowhere'.*demo.*mine") as info:
            load_dataset("nowhere")
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    finally:
        manifest_module.DATASETS.unregister("mine")
