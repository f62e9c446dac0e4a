"""MSD, nnU-Net v2 and images/ + labels/ NIfTI folders, written with nibabel to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import nibabel as nib
import numpy as np
import pytest

import medseg_env  # noqa: F401  (registers the envs)
from medseg_env.data import (
    detect_layout,
    load_dataset,
    load_layout,
    load_msd,
    load_nifti_folder,
    load_nnunet,
)
from medseg_env.data import layouts as layouts_module
from medseg_env.data.intensity import apply_window, normalize_percentile
from medseg_env.data.layouts import normalize_modality

ZOOMS = (0.8, 0.8, 2.5)
SHAPE = (32, 32, 6)
MIN_AREA = 16


def label_volume(shift: int = 0) -> np.ndarray:
    """Label 1 (8x8) in z 1-3, label 2 (6x10) in z 2-4; ``shift`` moves the blobs."""
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[4 + shift : 12 + shift, 4:12, 1:4] = 1
    lab[16:22, 14 + shift : 24 + shift, 2:5] = 2
    return lab


def ct_volume(lab: np.ndarray) -> np.ndarray:
    """HU: air outside, a gradient in the body, 60 in label 1, 150 in label 2."""
    ct = np.full(lab.shape, -1000, dtype=np.int16)
    ct[2:30, 2:30, :] = np.linspace(-200, 300, 28, dtype=np.int16)[None, :, None]
    ct[lab == 1] = 60
    ct[lab == 2] = 150
    return ct


def write_nifti(path: Path, data: np.ndarray, zooms=ZOOMS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms[:3], 1.0])), str(path))
    return path


def n_expected(labels: list[np.ndarray], min_area: int = MIN_AREA, axis: int = 2) -> int:
    """(case, slice, value) triples that should become samples, counted independently."""
    total = 0
    for lab in labels:
        for k in range(lab.shape[axis]):
            sl = np.take(lab, k, axis=axis)
            total += sum(1 for v in np.unique(sl) if v and (sl == v).sum() >= min_area)
    return total


def write_msd(root: Path, cases=("liver_0", "liver_1"), *, four_d: bool = False) -> Path:
    folder = root / "Task03_Liver"
    for i, case in enumerate(cases):
        lab = label_volume(i)
        image = ct_volume(lab)
        if four_d:  # channel c is a different picture: c * 1000 + the CT values
            image = np.stack([image.astype(np.float32) + 1000 * c for c in range(4)], axis=-1)
        write_nifti(folder / "imagesTr" / f"{case}.nii.gz", image, (*ZOOMS, 1.0))
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", lab)
    write_nifti(folder / "imagesTs" / "liver_9.nii.gz", ct_volume(label_volume()))  # no label
    # macOS junk shipped in some copies of the MSD tarballs: not NIfTI, must be ignored.
    (folder / "imagesTr" / f"._{cases[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (folder / "labelsTr" / f"._{cases[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    meta = {
        "name": "Liver",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} if four_d else {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(cases),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases
        ],
        "test": ["./imagesTs/liver_9.nii.gz"],
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def write_nnunet(root: Path, cases=("case_1", "case_2"), *, labels=None) -> Path:
    folder = root / "Dataset003_Liver"
    for i, case in enumerate(cases):
        lab = label_volume(i)
        write_nifti(folder / "imagesTr" / f"{case}_0000.nii.gz", ct_volume(lab))
        # channel 1: inverted contrast, must not be used
        write_nifti(folder / "imagesTr" / f"{case}_0001.nii.gz", -ct_volume(lab))
        write_nifti(folder / "labelsTr" / f"{case}.nii.gz", lab)
    meta = {
        "channel_names": {"0": "CT", "1": "CT"},
        "labels": labels or {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def set_json(folder: Path, **changes) -> None:
    path = folder / "dataset.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def check_case(ds, case: str, lab: np.ndarray, grey: np.ndarray) -> None:
    """Every sample of ``case`` has the mask of its label value and the expected grey image."""
    names = {"liver": 1, "cancer": 2, "tumour": 2, "label_1": 1, "label_2": 2}
    found = [s for s in ds if s.source_id == case]
    assert found
    for s in found:
        _, slice_id, _ = s.sample_id.split("/")
        k = int(slice_id[1:])
        assert slice_id[0] == "z"
        np.testing.assert_array_equal(s.mask, lab[:, :, k] == names[s.target])
        np.testing.assert_array_equal(s.image[:, :, 0], grey[:, :, k])
        np.testing.assert_array_equal(s.image[:, :, 2], grey[:, :, k])


# --- MSD -----------------------------------------------------------------------------------------


def test_msd_ct_folder(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    assert detect_layout(folder) == "msd"
    ds = load_dataset(folder)
    labels = [label_volume(0), label_volume(1)]
    assert len(ds) == n_expected(labels)
    assert ds.name == "Task03_Liver"
    assert ds.targets == ("cancer", "liver")
    assert ds.modalities == ("CT",)
    assert ds.source_ids == ("liver_0", "liver_1")  # sorted cases; imagesTs/ and ._* ignored
    assert all(s.spacing == pytest.approx((0.8, 0.8)) for s in ds)
    ids = [s.sample_id for s in ds]
    assert len(set(ids)) == len(ids)
    # cases in sorted order, then slices: (case, slice) never goes backwards
    assert [i.split("/")[:2] for i in ids] == sorted(i.split("/")[:2] for i in ids)
    assert "liver_0/z002/liver" in {s.sample_id for s in ds}
    for i, lab in enumerate(labels):
        # CT default: the soft_tissue window over raw HU
        check_case(ds, f"liver_{i}", lab, apply_window(ct_volume(lab), "soft_tissue"))
    # deterministic
    assert [s.sample_id for s in load_msd(folder)] == [s.sample_id for s in ds]


def test_msd_4d_uses_channel_0(tmp_path: Path) -> None:
    folder = write_msd(tmp_path, ("BRATS_001", "BRATS_002"), four_d=True)
    ds = load_dataset(str(folder))
    assert ds.modalities == ("MR",)  # "FLAIR" -> MR: percentile normalisation
    assert all(s.spacing == pytest.approx((0.8, 0.8)) for s in ds)
    for i, case in enumerate(("BRATS_001", "BRATS_002")):
        lab = label_volume(i)
        channel0 = ct_volume(lab).astype(np.float32)
        check_case(ds, case, lab, normalize_percentile(channel0))
    # The channels differ by an offset only, so check the raw values with a window: label 1 is
    # 60 in channel 0 (mid-grey), 1060 and more in the others (white).
    windowed = load_dataset(folder, modality="CT", window=(100.0, 200.0))
    s = windowed.get("BRATS_001/z002/liver")
    assert set(np.unique(s.image[s.mask])) == {apply_window(np.array([60.0]), (100, 200))[0]}
    assert 0 < s.image[s.mask][0, 0] < 255


def test_kwargs_override_dataset_json(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    labels = [label_volume(0), label_volume(1)]
    along_x = load_dataset(folder, axis=0, min_area=4)
    assert len(along_x) == n_expected(labels, min_area=4, axis=0)
    assert all(s.spacing == pytest.approx((0.8, 2.5)) for s in along_x)
    assert all(s.sample_id.split("/")[1].startswith("x") for s in along_x)
    assert len(load_dataset(folder, max_slices_per_target=1)) == 2 * 2  # 2 cases x 2 labels
    assert len(load_dataset(folder, min_area=61)) == 2 * 3  # only the 8x8 blob of label 1
    lung = load_dataset(folder, window="lung")
    check_case(lung, "liver_0", labels[0], apply_window(ct_volume(labels[0]), "lung"))
    mr = load_dataset(folder, modality="MR", label_map={1: "organ", 2: "lesion"}, name="mine")
    assert mr.modalities == ("MR",) and mr.targets == ("lesion", "organ") and mr.name == "mine"
    check_case_grey = normalize_percentile(ct_volume(labels[1]).astype(np.float32))
    s = mr.get("liver_1/z002/organ")
    np.testing.assert_array_equal(s.image[:, :, 1], check_case_grey[:, :, 2])
    with pytest.raises(TypeError, match="unknown option.*'axes'"):
        load_dataset(folder, axes=1)
    with pytest.raises(ValueError, match="unknown CT window preset 'spleen'"):
        load_dataset(folder, window="spleen")


def test_nnunet_v1_task_with_msd_json(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    for p in sorted((folder / "imagesTr").glob("liver_*.nii.gz")):
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    assert detect_layout(folder) == "msd"
    ds = load_dataset(folder)
    assert ds.source_ids == ("liver_0", "liver_1") and ds.targets == ("cancer", "liver")


# --- nnU-Net v2 ----------------------------------------------------------------------------------


def test_nnunet_v2_folder(tmp_path: Path) -> None:
    folder = write_nnunet(tmp_path)
    (folder / "imagesTr" / "._case_1_0000.nii.gz").write_bytes(b"junk")
    assert detect_layout(folder) == "nnunet"
    ds = load_dataset(folder)
    labels = [label_volume(0), label_volume(1)]
    assert len(ds) == n_expected(labels)
    assert ds.name == "Dataset003_Liver" and ds.modalities == ("CT",)
    assert ds.targets == ("liver", "tumour")
    assert ds.source_ids == ("case_1", "case_2")
    for i, lab in enumerate(labels):  # channel _0000, not the inverted _0001
        check_case(ds, f"case_{i + 1}", lab, apply_window(ct_volume(lab), "soft_tissue"))
    assert len(load_nnunet(folder, max_slices_per_target=2)) == 2 * 2 * 2


def test_nnunet_ignore_label_and_mr(tmp_path: Path) -> None:
    folder = write_nnunet(tmp_path, labels={"background": 0, "liver": 1, "ignore": 2})
    set_json(folder, channel_names={"0": "T2"})
    ds = load_dataset(folder)
    assert ds.targets == ("liver",) and ds.modalities == ("MR",)
    assert len(ds) == n_expected([(lab == 1).astype(np.uint8) for lab in map(label_volume, (0, 1))])


# --- images/ + labels/ ---------------------------------------------------------------------------


def test_plain_nifti_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_scans"
    lab_a, lab_b = label_volume(0), label_volume(2)
    write_nifti(folder / "images" / "a_0000.nii.gz", ct_volume(lab_a))  # optional _0000
    write_nifti(folder / "images" / "b.nii", ct_volume(lab_b))
    write_nifti(folder / "labels" / "a.nii.gz", lab_a)
    write_nifti(folder / "labels" / "b.nii", lab_b)
    (folder / "images" / "notes.txt").write_text("ignored")
    assert detect_layout(folder) == "nifti_folder"
    ds = load_dataset(folder)
    assert len(ds) == n_expected([lab_a, lab_b])
    assert ds.source_ids == ("a", "b") and ds.targets == ("label_1", "label_2")
    assert ds.modalities == ("CT",) and ds.name == "my_scans"
    check_case(ds, "a", lab_a, apply_window(ct_volume(lab_a), "soft_tissue"))
    named = load_nifti_folder(folder, modality="MR", label_map={1: "liver", 2: "tumour"})
    assert named.targets == ("liver", "tumour") and named.modalities == ("MR",)

    # imagesTr/ + labelsTr/ without dataset.json reads the same way
    tr = tmp_path / "tr"
    write_nifti(tr / "imagesTr" / "a.nii.gz", ct_volume(lab_a))
    write_nifti(tr / "labelsTr" / "a.nii.gz", lab_a)
    assert detect_layout(tr) == "nifti_folder"
    assert len(load_layout(tr)) == n_expected([lab_a])


def test_negative_case_is_skipped(tmp_path: Path) -> None:
    folder = write_msd(tmp_path, ("liver_0", "liver_1", "liver_2"))
    write_nifti(folder / "labelsTr" / "liver_2.nii.gz", np.zeros(SHAPE, np.uint8))
    assert load_dataset(folder).source_ids == ("liver_0", "liver_1")
    with pytest.raises(ValueError, match="no target in .*liver_2.nii.gz"):
        load_msd(folder, skip_empty=False)
    with pytest.raises(ValueError, match="no target in any of the 3 label"):
        load_msd(folder, min_area=1000)


def test_modality_names() -> None:
    for name in ("CT", "ct", "MRI", "MR", "T1", "T2", "FLAIR", "T1w", "T2w", "t1gd", "ADC"):
        assert normalize_modality(name) == ("CT" if name.lower() == "ct" else "MR")
    assert normalize_modality("noNorm") == "noNorm"
    assert normalize_modality(" PET ") == "PET"


# --- errors --------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any volume is loaded: errors must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("load_nifti called before all pairs were checked")

    monkeypatch.setattr(layouts_module, "load_nifti", refuse)


@pytest.mark.usefixtures("no_loading")
def test_missing_partners_name_the_files(tmp_path: Path) -> None:
    nn = write_nnunet(tmp_path, ("case_1", "case_2", "case_3"))
    (nn / "labelsTr" / "case_3.nii.gz").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"Dataset003_Liver: imagesTr/case_3_0000.nii.gz has no label labelsTr/case_3.nii.gz",
    ):
        load_dataset(nn)
    write_nifti(nn / "labelsTr" / "case_3.nii.gz", label_volume())
    write_nifti(nn / "labelsTr" / "extra.nii.gz", label_volume())
    with pytest.raises(FileNotFoundError, match=r"labelsTr/extra.nii.gz has no image imagesTr/"):
        load_dataset(nn)
    (nn / "labelsTr" / "extra.nii.gz").unlink()
    write_nifti(nn / "imagesTr" / "stray.nii.gz", ct_volume(label_volume()))
    with pytest.raises(FileNotFoundError, match=r"imagesTr/stray.nii.gz is not named <case>_"):
        load_dataset(nn)
    (nn / "imagesTr" / "stray.nii.gz").unlink()
    (nn / "imagesTr" / "case_2_0000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"'case_2' has no channel-0 image .*_0000"):
        load_dataset(nn)

    msd = write_msd(tmp_path)
    (msd / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"imagesTr/liver_1.nii.gz has no label labelsTr/liver_1.nii.gz"
    ):
        load_dataset(msd)
    (msd / "imagesTr" / "liver_1.nii.gz").rename(msd / "labelsTr" / "liver_1.nii.gz")
    (msd / "imagesTr" / "liver_0.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"no NIfTI image .* in imagesTr/"):
        load_dataset(msd)  # only ._ junk left in imagesTr: empty
    write_nifti(msd / "imagesTr" / "liver_0.nii.gz", ct_volume(label_volume()))
    with pytest.raises(
        FileNotFoundError, match=r"labelsTr/liver_1.nii.gz has no image imagesTr/liver_1.nii.gz"
    ):
        load_dataset(msd)


@pytest.mark.usefixtures("no_loading")
def test_bad_dataset_json(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    good = (folder / "dataset.json").read_text()
    (folder / "dataset.json").write_text(good[:-5])
    with pytest.raises(ValueError, match=r"cannot read .*dataset.json: JSONDecodeError"):
        load_dataset(folder)
    (folder / "dataset.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"dataset.json: the top level must be a JSON object"):
        load_dataset(folder)
    (folder / "dataset.json").write_text(good)
    set_json(folder, labels={"0": "background", "one": "liver"})
    with pytest.raises(ValueError, match=r"dataset.json: key 'labels'.*'one' is not an integer"):
        load_dataset(folder)
    set_json(folder, labels=["liver"])
    with pytest.raises(ValueError, match=r"dataset.json: key 'labels' must map values to names"):
        load_dataset(folder)
    (folder / "dataset.json").write_text(good)
    set_json(folder, modality={"1": "CT"})
    with pytest.raises(ValueError, match=r"dataset.json: key 'modality' has no name for channel"):
        load_dataset(folder)
    meta = json.loads(good)
    del meta["modality"]
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"dataset.json: missing key 'modality'"):
        load_dataset(folder)


@pytest.mark.usefixtures("no_loading")
def test_nnunet_regions_and_file_ending_refused(tmp_path: Path) -> None:
    folder = write_nnunet(tmp_path, labels={"background": 0, "whole_tumor": [1, 2], "enhancing": 2})
    with pytest.raises(ValueError, match=r"dataset.json: key 'labels' entry 'whole_tumor'.*region"):
        load_dataset(folder)
    set_json(folder, labels={"background": 0, "liver": 1}, file_ending=".png")
    with pytest.raises(ValueError, match=r"dataset.json: key 'file_ending' is '.png'; only NIfTI"):
        load_dataset(folder)
    set_json(folder, file_ending=".nrrd")
    with pytest.raises(ValueError, match=r"only NIfTI \(.nii.gz or .nii\) is supported"):
        load_nnunet(folder)


@pytest.mark.usefixtures("no_loading")
def test_shape_mismatch_and_unreadable_file(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    write_nifti(folder / "labelsTr" / "liver_1.nii.gz", np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(
        ValueError,
        match=r"shape mismatch: image imagesTr/liver_1.nii.gz is \(32, 32, 6\) "
        r"but label labelsTr/liver_1.nii.gz is \(32, 32, 5\)",
    ):
        load_dataset(folder)
    (folder / "labelsTr" / "liver_1.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(ValueError, match=r"cannot read labelsTr/liver_1.nii.gz"):
        load_dataset(folder)


def test_unrecognised_directory_lists_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ValueError, match=r"MSD or nnU-Net v2.*images/ \+ labels/"):
        load_dataset(tmp_path / "stuff")
    assert detect_layout(tmp_path / "stuff") is None
    with pytest.raises(ValueError, match="not a dataset folder"):
        load_layout(tmp_path / "stuff")


# --- the environment -----------------------------------------------------------------------------


def test_env_resets_on_an_msd_folder(tmp_path: Path) -> None:
    folder = write_msd(tmp_path)
    env = gym.make("MedSeg-v0", dataset=str(folder), obs_size=64)
    try:
        obs, info = env.reset(seed=0)
        assert obs["image"].shape == (64, 64, 3)
        assert info["source_id"] in ("liver_0", "liver_1")
        assert info["target"] in ("liver", "cancer") and info["modality"] == "CT"
    finally:
        env.close()
