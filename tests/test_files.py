"""medseg_env.files.default_folder: the one rule for the default output and cache folders."""

from __future__ import annotations

from medseg_agents.training.sft import ExportConfig, default_out_dir
from medseg_bench.config import BenchConfig
from medseg_bench.config import default_out_dir as bench_out_dir
from medseg_env.files import default_folder, expand_folder
from medseg_env.precompute import default_cache_dir
from medseg_env.segmenters.onnx_cache import onnx_cache_dir

ENV = "MEDSEG_TEST_FOLDER"


def test_the_variable_wins_then_xdg_then_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    assert default_folder("k", ENV) == tmp_path / "home" / ".cache" / "medseg-env" / "k"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_folder("k", ENV) == tmp_path / "xdg" / "medseg-env" / "k"
    monkeypatch.setenv(ENV, "")  # empty: as if unset
    assert default_folder("k", ENV) == tmp_path / "xdg" / "medseg-env" / "k"
    monkeypatch.setenv(ENV, str(tmp_path / "mine"))
    assert default_folder("k", ENV) == tmp_path / "mine"  # the folder itself, no <kind>


def test_folders_are_absolute_and_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SOMEWHERE", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "~/a")
    assert default_folder("k", ENV) == tmp_path / "home" / "a"
    monkeypatch.setenv(ENV, "$SOMEWHERE/b")
    assert default_folder("k", ENV) == tmp_path / "elsewhere" / "b"
    monkeypatch.setenv(ENV, "relative")
    folder = default_folder("k", ENV)
    assert folder.is_absolute() and folder == tmp_path / "relative"
    monkeypatch.chdir(tmp_path / "..")  # a later chdir does not move an expanded folder
    assert expand_folder(folder) == tmp_path / "relative"
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "~/xdg")
    assert default_folder("k", ENV) == tmp_path / "home" / "xdg" / "medseg-env" / "k"


def test_every_default_folder_follows_the_rule(tmp_path, monkeypatch):
    """The benchmark's results, the SFT export, the embedding cache and the ONNX graphs."""
    for var in ("MEDSEG_BENCH_DIR", "MEDSEG_SFT_DIR", "MEDSEG_CACHE_DIR", "MEDSEG_ONNX_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "medseg-env"
    bench, sft = BenchConfig(policies=("ritm",)), ExportConfig()
    assert bench_out_dir(bench).parent == root / "bench"
    assert default_out_dir(sft, "m").parent == root / "sft"
    assert default_cache_dir() == root / "embeddings"
    assert onnx_cache_dir() == root / "onnx"
    monkeypatch.setenv("MEDSEG_BENCH_DIR", "~/b")
    monkeypatch.setenv("MEDSEG_SFT_DIR", "~/s")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bench_out_dir(bench).parent == tmp_path / "home" / "b"
    assert default_out_dir(sft, "m").parent == tmp_path / "home" / "s"
