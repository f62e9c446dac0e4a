"""Issue 13, item 2: ``python -m medseg_env precompute`` and the runs that follow it.

Everything runs on the bundled data with real backends: the weight-free ``classical`` for the
full dataset, and the default ``litemedsam_clicks`` on three images. Encoder calls are counted
by wrapping the backend's real ``_encode`` (the model itself runs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from medseg_testing import gt_box_action

import medseg_env.segmenters.cache as cache_module
from medseg_env import actions
from medseg_env.__main__ import main as medseg_main
from medseg_env.data import Dataset, Sample
from medseg_env.env import MedSegEnv
from medseg_env.geometry import letterbox
from medseg_env.precompute import PrecomputeError, default_cache_dir, precompute
from medseg_env.registry import parse_spec
from medseg_env.segmenters import Classical, EmbeddingCache, LiteMedSAMClicks
from medseg_env.segmenters.cache import CACHE_DIR_ENV


def count_encodes(monkeypatch, cls, fail_after: int | None = None, error=RuntimeError):
    """Wrap ``cls._encode`` (the real one runs); the list returned grows by one per call.

    ``fail_after``: the call after that many raises ``error`` instead (an interruption).
    """
    calls: list[int] = []
    real = getattr(cls._encode, "real_encode", cls._encode)  # wrap the model's, not a wrapper

    def counted(self, image):
        if fail_after is not None and len(calls) >= fail_after:
            raise error("interrupted by the test")
        calls.append(1)
        return real(self, image)

    counted.real_encode = real  # type: ignore[attr-defined]
    monkeypatch.setattr(cls, "_encode", counted)
    return calls


def entries(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (temporary ones included), by relative path: its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def distinct_images(dataset: Dataset) -> int:
    return len({hashlib.sha256(s.image.tobytes()).hexdigest() for s in dataset})


def play_every_sample(env: gym.Env, dataset: Dataset) -> list[float]:
    """One episode per sample, in order: a ground-truth box, then stop. The final Dice each."""
    dices = []
    for index in range(len(dataset)):
        env.reset(seed=index, options={"sample_index": index})
        _, _, _, _, info = env.step(gt_box_action(env))
        env.step(actions.stop())
        dices.append(info["dice"])
    return dices


@pytest.fixture(scope="module")
def classical_cache(demo, tmp_path_factory) -> Path:
    """``demo`` precomputed once with ``classical`` (the tests copy it before changing it)."""
    folder = tmp_path_factory.mktemp("classical-cache")
    report = precompute(demo, "classical", cache_dir=folder, progress=False)
    assert report.encoded == report.images == distinct_images(demo)
    return folder


# --- 1: after precompute, a run makes zero encoder calls -----------------------------------


def test_after_precompute_a_run_over_every_sample_makes_no_encoder_call(
    demo, classical_cache, tmp_path, monkeypatch
):
    calls = count_encodes(monkeypatch, Classical)
    # The counter counts: the same run on an empty disk cache encodes each distinct image once.
    cold = Classical(cache=EmbeddingCache(disk_dir=tmp_path / "empty"))
    cold_dices = play_every_sample(MedSegEnv(dataset=demo, segmenter=cold), demo)
    assert len(calls) == cold.encoder_calls == distinct_images(demo) == 20
    calls.clear()
    # A new process-level memory cache on the precomputed folder: no encoder call at all.
    warm = Classical(cache=EmbeddingCache(disk_dir=classical_cache))
    env = MedSegEnv(dataset=demo, segmenter=warm)
    dices = play_every_sample(env, demo) + play_every_sample(env, demo)
    assert calls == [] and warm.encoder_calls == 0
    assert dices == cold_dices * 2  # the stored embeddings give the very same masks
    assert warm.cache.hits >= len(demo) and warm.cache.misses == 0


def test_a_run_through_medseg_cache_dir_reuses_what_the_command_wrote(
    demo, tmp_path, monkeypatch, capsys
):
    """The path a benchmark or training run takes: ``$MEDSEG_CACHE_DIR``, the segmenter built
    by name on the process-wide cache, the command with no ``--cache-dir``."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    monkeypatch.setattr(cache_module, "_DEFAULT", None)  # a fresh process's default cache
    calls = count_encodes(monkeypatch, Classical)
    status = medseg_main(["precompute", "demo", "-s", "classical", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0 and len(calls) == 20
    assert "90 samples of demo: 20 distinct images under classical-watershed-64-v1" in out
    assert "encoded 20, skipped 0 (already cached), wrote 20.0 MiB" in out
    assert "later runs read it" not in out  # $MEDSEG_CACHE_DIR names this folder already
    assert len(entries(folder)) == 20
    calls.clear()
    monkeypatch.setattr(cache_module, "_DEFAULT", None)
    env = gym.make("MedSeg-v0", dataset="demo", segmenter="classical")
    assert env.unwrapped.segmenter.cache.disk_dir == folder
    play_every_sample(env, demo)
    assert calls == []


def test_the_canvas_size_is_part_of_what_is_encoded(small_demo, tmp_path, monkeypatch):
    calls = count_encodes(monkeypatch, Classical)
    precompute(small_demo, "classical", cache_dir=tmp_path, obs_size=128, progress=False)
    assert len(calls) == 3
    calls.clear()
    seg = Classical(cache=EmbeddingCache(disk_dir=tmp_path))
    play_every_sample(MedSegEnv(dataset=small_demo, segmenter=seg, obs_size=128), small_demo)
    assert calls == []
    play_every_sample(MedSegEnv(dataset=small_demo, segmenter=seg), small_demo)  # 256 px
    assert len(calls) == 3


@pytest.mark.slow
def test_litemedsam_clicks_after_precompute_makes_no_encoder_call(
    small_demo, tmp_path, monkeypatch
):
    """The default backend (its encoder takes about 1.4 s an image here), on three images."""
    calls = count_encodes(monkeypatch, LiteMedSAMClicks)
    report = precompute(small_demo, "litemedsam_clicks", cache_dir=tmp_path, progress=False)
    assert len(calls) == report.encoded == 3  # the counter counts this backend's encodes
    assert report.bytes_written == sum(len(b) for b in entries(tmp_path).values())
    assert report.bytes_written > 3 * 4 * 256 * 64 * 64  # (1, 256, 64, 64) float32 each
    calls.clear()
    warm = LiteMedSAMClicks(cache=EmbeddingCache(disk_dir=tmp_path))
    dices = play_every_sample(MedSegEnv(dataset=small_demo, segmenter=warm), small_demo)
    assert calls == [] and warm.encoder_calls == 0
    assert min(dices) > 0.5, dices  # the stored embeddings are the model's own


# --- 2: a second run encodes nothing and rewrites nothing ----------------------------------


def test_a_second_run_skips_everything_and_leaves_the_files_as_they_were(
    demo, classical_cache, monkeypatch
):
    before = entries(classical_cache)
    stats = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in classical_cache.rglob("*")}
    calls = count_encodes(monkeypatch, Classical)
    report = precompute(demo, "classical", cache_dir=classical_cache, progress=False)
    assert calls == []
    assert (report.samples, report.images, report.encoded, report.skipped) == (90, 20, 0, 20)
    assert report.bytes_written == 0
    assert entries(classical_cache) == before
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in classical_cache.rglob("*")} == (
        stats
    )


# --- 3: interruptions resume; damaged entries are redone -----------------------------------


def test_an_interrupted_run_resumes_with_the_remaining_images(
    demo, classical_cache, tmp_path, monkeypatch
):
    calls = count_encodes(monkeypatch, Classical, fail_after=7)
    with pytest.raises(RuntimeError, match="interrupted by the test") as caught:
        precompute(demo, "classical", cache_dir=tmp_path, progress=False)
    assert any("after 7 images encoded" in note for note in caught.value.__notes__)
    assert len(calls) == 7 and len(entries(tmp_path)) == 7  # no temporary file left either
    calls = count_encodes(monkeypatch, Classical)
    report = precompute(demo, "classical", cache_dir=tmp_path, progress=False)
    assert (report.encoded, report.skipped) == (13, 7) and len(calls) == 13
    assert entries(tmp_path) == entries(classical_cache)  # as if never interrupted


def test_ctrl_c_stops_the_command_with_status_130_and_it_resumes(
    demo, tmp_path, monkeypatch, capsys
):
    count_encodes(monkeypatch, Classical, fail_after=4, error=KeyboardInterrupt)
    args = ["precompute", "demo", "-s", "classical", "--cache-dir", str(tmp_path)]
    assert medseg_main([*args, "--no-progress"]) == 130
    assert "after 4 images encoded" in capsys.readouterr().err
    calls = count_encodes(monkeypatch, Classical)
    assert medseg_main([*args, "--no-progress"]) == 0
    assert "encoded 16, skipped 4" in capsys.readouterr().out and len(calls) == 16


def test_damaged_entries_are_detected_and_redone(demo, classical_cache, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    for name, data in entries(classical_cache).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    files = sorted(folder.rglob("*.safetensors"))
    truncated, garbage, empty, flipped = files[:4]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])  # torn
    garbage.write_bytes(b"not a safetensors file")
    empty.write_bytes(b"")
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 0xFF  # one byte of the tensor: its checksum no longer matches
    flipped.write_bytes(bytes(data))
    calls = count_encodes(monkeypatch, Classical)
    report = precompute(demo, "classical", cache_dir=folder, progress=False)
    assert (report.encoded, report.skipped) == (4, 16) and len(calls) == 4
    assert entries(folder) == entries(classical_cache)  # rewritten byte for byte


def test_an_entry_is_never_visible_half_written(small_demo, tmp_path, monkeypatch):
    """Writes go to a temporary file in the entry's folder, renamed over the final name; a
    write cut short (Ctrl-C inside the writer) leaves neither an entry nor a temporary file."""
    renames: list[tuple[Path, Path, bool]] = []
    real_replace = cache_module.os.replace

    def replace(src, dst):
        renames.append((Path(src), Path(dst), Path(dst).exists()))
        real_replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", replace)
    report = precompute(small_demo, "classical", cache_dir=tmp_path, progress=False)
    assert len(renames) == report.encoded == 3
    for src, dst, existed in renames:
        assert src.parent == dst.parent and not existed
        assert src.name.startswith(".") and src.name.endswith(".tmp")
    assert sorted(entries(tmp_path)) == sorted(str(d.relative_to(tmp_path)) for _, d, _ in renames)

    real_save = cache_module.save_file

    def cut_short(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # part of the entry reached the disk
        raise KeyboardInterrupt

    other = tmp_path / "other"
    monkeypatch.setattr(cache_module, "save_file", cut_short)
    with pytest.raises(KeyboardInterrupt):
        precompute(small_demo, "classical", cache_dir=other, progress=False)
    assert not other.exists() or entries(other) == {}
    monkeypatch.setattr(cache_module, "save_file", real_save)
    assert precompute(small_demo, "classical", cache_dir=other, progress=False).encoded == 3


def test_an_unwritable_cache_dir_is_an_error_not_a_warning(small_demo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with (
        pytest.warns(RuntimeWarning, match="cannot be written"),
        pytest.raises(PrecomputeError, match="could not write the embedding cache entry"),
    ):
        precompute(small_demo, "classical", cache_dir=blocker / "cache", progress=False)


# --- 4: keys hold the image content and the model identity ---------------------------------


def test_another_model_id_is_another_entry(demo, classical_cache, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    for name, data in entries(classical_cache).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    calls = count_encodes(monkeypatch, Classical)
    report = precompute(
        demo, "classical", segmenter_kwargs={"work_size": 96}, cache_dir=folder, progress=False
    )
    assert report.model_id == "classical-watershed-96-v1"
    assert (report.encoded, report.skipped) == (20, 0) and len(calls) == 20
    assert len(entries(folder)) == 40
    # and each model reads its own entries back
    calls.clear()
    for work_size in (64, 96):
        seg = Classical(work_size=work_size, cache=EmbeddingCache(disk_dir=folder))
        play_every_sample(MedSegEnv(dataset=demo[:12], segmenter=seg), demo[:12])
    assert calls == []


def test_the_same_pixels_are_encoded_once_and_other_pixels_again(demo, tmp_path, monkeypatch):
    first = demo[0]
    twin = Sample(
        first.image.copy(),  # another array, the same pixels
        ~first.mask,
        "twin",
        first.modality,
        "elsewhere",
        "twin-0",
        first.spacing,
    )
    image = first.image.copy()
    image[0, 0, 0] ^= 1  # one value differs
    nudged = Sample(image, first.mask, first.target, first.modality, "x", "nudged", first.spacing)
    calls = count_encodes(monkeypatch, Classical)
    report = precompute(Dataset([first, twin], "twins"), "classical", cache_dir=tmp_path)
    assert (report.samples, report.images, report.encoded) == (2, 1, 1) and len(calls) == 1
    report = precompute(Dataset([nudged], "nudged"), "classical", cache_dir=tmp_path)
    assert report.encoded == 1 and len(entries(tmp_path)) == 2
    # The bundled data: 90 samples (several targets per slice) on 20 distinct images.
    calls.clear()
    report = precompute(demo, "classical", cache_dir=tmp_path / "demo", progress=False)
    assert (report.samples, report.images) == (90, 20) and len(calls) == 20


def test_precompute_encodes_what_the_env_encodes(small_demo, tmp_path):
    """The entries are the env's own: the letterboxed canvas under the model's id."""
    precompute(small_demo, "classical", cache_dir=tmp_path, progress=False)
    seg = Classical(cache=EmbeddingCache(disk_dir=tmp_path))
    for sample in small_demo:
        canvas, _, _ = letterbox(sample, 256)
        key = cache_module.image_key(canvas, seg.model_id)
        assert seg.cache.disk_path(key).is_file()
        stored = seg.cache.get(key, model_id=seg.model_id, image_size=(256, 256))
        np.testing.assert_array_equal(stored.features.numpy(), seg._encode(canvas).features)


# --- the command and its defaults ----------------------------------------------------------


def test_the_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "medseg-env" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "medseg-env" / "embeddings"
    monkeypatch.setenv(CACHE_DIR_ENV, "~/c")
    assert default_cache_dir() == tmp_path / "home" / "c"


def test_the_command_says_how_later_runs_find_the_cache(small_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "xdg" / "medseg-env" / "embeddings"
    assert medseg_main(["precompute", "demo", "-s", "classical", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"into {folder}\nlater runs read it with {CACHE_DIR_ENV}={folder}\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xdg"]  # nothing in the cwd


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "nope"),
        (["demo", "-s", "nope"], "unknown segmenter 'nope'"),
        (["demo", "-s", "classical:work_size"], "is not key=value"),
        (["demo", "-s", "classical:colour=1"], "colour"),
        (["demo", "--obs-size", "8"], "at least 16"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        medseg_main(["precompute", *args, "--cache-dir", str(tmp_path)])
    assert caught.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_demo_command_still_runs_by_default(monkeypatch, capsys):
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)  # writes nowhere on disk
    monkeypatch.setattr(cache_module, "_DEFAULT", None)
    assert medseg_main(["--episodes", "1"]) == 0
    assert "mean Dice over 1 episodes" in capsys.readouterr().out
    assert medseg_main(["demo", "--episodes", "1", "--seed", "3"]) == 0
    assert "mean Dice over 1 episodes" in capsys.readouterr().out


def test_parse_spec():
    assert parse_spec("classical") == ("classical", {})
    assert parse_spec("classical:work_size=96,algorithm=grabcut,guess=false", "segmenter") == (
        "classical",
        {"work_size": 96, "algorithm": "grabcut", "guess": False},
    )
    assert parse_spec("medsam2:checkpoint=/w/a.pt") == ("medsam2", {"checkpoint": "/w/a.pt"})
    with pytest.raises(ValueError, match="has no segmenter name"):
        parse_spec(":a=1", "segmenter")
