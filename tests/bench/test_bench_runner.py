"""End-to-end runs on a tiny dataset with the real LiteMedSAM: files, determinism, resume,
refusals."""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from pathlib import Path

import pytest

from medseg_bench import BenchConfig, BenchError, run_benchmark
from medseg_bench.plan import select_samples
from medseg_bench.records import Journal
from medseg_env.data import Dataset, demo_dataset
from medseg_env.segmenters import shared_segmenter

# The original, box-only LiteMedSAM: the clicker's clicks exercise the invalid-action path.
CONFIG = BenchConfig(
    policies=("boxer", "clicker"),
    datasets=("tiny",),
    segmenters=("litemedsam",),
    budget=3,
    seed=7,
)
RESULT_FILES = (
    "config.json",
    "episodes.jsonl",
    "results.json",
    "episodes.csv",
    "timings.csv",
    "summary.csv",
    "summary.md",
    "dice_vs_turn.png",
    "examples.png",
)


def run(config, out, policies, tiny, **kwargs):
    kwargs = {"progress": False, "plots": False, **kwargs}
    return run_benchmark(config, out, policies=policies, datasets={"tiny": tiny}, **kwargs)


def results_without_run(folder: Path) -> dict:
    doc = json.loads((folder / "results.json").read_text())
    doc.pop("run")
    return doc


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny, make_policies):
    """One uninterrupted run: 2 policies x 3 samples, budget 3, with the figures."""
    out = tmp_path_factory.mktemp("reference")
    return run(CONFIG, out, make_policies(), tiny, plots=True, examples=2)


def test_result_files_are_well_formed(reference):
    out = reference.out_dir
    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    for name in ("dice_vs_turn.png", "examples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    doc = json.loads((out / "results.json").read_text())
    assert doc["config"] == CONFIG.to_dict() and doc["seed"] == 7
    assert doc["budgets"] == {"boxer": 3, "clicker": 3} and doc["episodes"] == 6
    for package in ("medseg-env", "torch", "numpy", "gymnasium", "onnxruntime"):
        assert doc["versions"][package]
    # which decoder ran is recorded, outside the model ids (the masks are the same)
    assert doc["runtime"] == {"litemedsam": {"device": "cpu", "decoder": "onnx"}}
    assert doc["run"]["executed_episodes"] == 6 and doc["run"]["resumed_episodes"] == 0
    idents = [(r["policy"], r["modality"]) for r in doc["summary"]]
    assert idents == [
        ("boxer", "all"),
        ("boxer", "CT"),
        ("boxer", "microscopy"),
        ("clicker", "all"),
        ("clicker", "CT"),
        ("clicker", "microscopy"),
    ]
    boxer, clicker = doc["summary"][0], doc["summary"][3]
    assert boxer["n"] == 3 and boxer["dice_t1_mean"] > 0.5 and boxer["stop_rate"] == 1.0
    assert boxer["turns_mean"] == 3.0 and boxer["invalid_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert clicker["dice_final_mean"] == 0.0 and clicker["noc85"] == 3.0  # budget counted
    assert clicker["nof85"] == 3 and clicker["invalid_rate"] == 1.0 and clicker["stop_rate"] == 0

    rows = csv_rows(out / "episodes.csv")
    assert len(rows) == 18  # 6 episodes x 3 turns
    box_rows = [r for r in rows if r["policy"] == "boxer"]
    assert [r["action"] for r in box_rows[:3]] == ["box", "positive_click", "stop"]
    assert box_rows[0]["invalid"] == "" and "box-only" in box_rows[1]["invalid"]
    assert box_rows[0]["dice"] == box_rows[2]["final_dice"]  # the invalid click kept the mask
    assert 0.0 < float(box_rows[0]["nsd"]) <= 1.0 and float(box_rows[0]["hd95"]) < 50
    assert {r["hd95"] for r in rows if r["policy"] == "clicker"} == {"inf"}
    assert {r["stopped"] for r in box_rows} == {"true"}
    assert len(csv_rows(out / "timings.csv")) == 6
    assert "| boxer | tiny | litemedsam | all | 3 |" in (out / "summary.md").read_text()
    assert len(Journal(out / "episodes.jsonl").load()) == 6


def test_same_seed_gives_identical_files(reference, tiny, make_policies, tmp_path):
    again = run(CONFIG, tmp_path / "again", make_policies(), tiny)
    for name in ("config.json", "episodes.csv", "summary.csv"):
        assert (again.out_dir / name).read_bytes() == (reference.out_dir / name).read_bytes()
    assert results_without_run(again.out_dir) == results_without_run(reference.out_dir)
    assert again.records == reference.records  # timings excluded from record equality

    other = run(
        BenchConfig(**{**CONFIG.to_dict(), "seed": 8}), tmp_path / "seed8", make_policies(), tiny
    )
    seeds = {(r.policy, r.sample_id): r.seed for r in reference.records}
    assert all(seeds[(r.policy, r.sample_id)] != r.seed for r in other.records)


def test_resume_after_a_crash_redoes_only_missing_episodes(
    reference, tiny, make_policies, tmp_path
):
    out = tmp_path / "crashed"
    # Episodes run sample by sample (boxer then clicker); the boxer crashes on its 5th call,
    # inside its second episode, after two episodes were journaled.
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(CONFIG, out, make_policies(fail_at_call=5), tiny)
    assert len(Journal(out / "episodes.jsonl").load()) == 2
    assert not (out / "results.json").exists()

    policies = make_policies()
    result = run(CONFIG, out, policies, tiny)
    assert (result.resumed, result.executed) == (2, 4)
    assert policies["boxer"].episodes == 2 and policies["clicker"].calls == 2 * 3
    assert (out / "episodes.csv").read_bytes() == (reference.out_dir / "episodes.csv").read_bytes()
    assert results_without_run(out) == results_without_run(reference.out_dir)
    run_info = json.loads((out / "results.json").read_text())["run"]
    assert run_info["resumed_episodes"] == 2 and run_info["executed_episodes"] == 4

    # A third run has nothing left to do.
    policies = make_policies()
    result = run(CONFIG, out, policies, tiny)
    assert (result.resumed, result.executed) == (6, 0)
    assert policies["boxer"].calls == 0 and policies["clicker"].calls == 0


def test_resume_after_a_torn_journal_line(reference, tiny, make_policies, tmp_path):
    out = tmp_path / "torn"
    out.mkdir()
    shutil.copy(reference.out_dir / "config.json", out)
    journal = (reference.out_dir / "episodes.jsonl").read_bytes()
    (out / "episodes.jsonl").write_bytes(journal[:-40])  # the last write was cut short

    policies = make_policies()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # replaying the resumed example episodes must agree
        result = run(CONFIG, out, policies, tiny, plots=True, examples=2)
    assert (result.resumed, result.executed) == (5, 1)
    assert (out / "episodes.csv").read_bytes() == (reference.out_dir / "episodes.csv").read_bytes()
    assert results_without_run(out) == results_without_run(reference.out_dir)
    assert (out / "examples.png").is_file()
    assert len(Journal(out / "episodes.jsonl").load()) == 6


def test_a_folder_of_another_config_is_refused_untouched(reference, tiny, make_policies, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference.out_dir, out)
    before = snapshot(out)
    changed = BenchConfig(**{**CONFIG.to_dict(), "budget": 4})
    with pytest.raises(BenchError, match=r"different config.*budget: 4 != 3"):
        run(changed, out, make_policies(), tiny)
    # Same config, other data under the same dataset name.
    other = Dataset(list(tiny)[:2], name="tiny")
    with pytest.raises(BenchError, match="different data"):
        run(CONFIG, out, make_policies(), other)
    assert snapshot(out) == before
    # Same config and data, but the folder was made with other weights for that segmenter
    # name (e.g. before an upgrade of the shipped weights).
    doc = json.loads((out / "config.json").read_text())
    assert doc["models"] == {"litemedsam": shared_segmenter("litemedsam").model_id}
    doc["models"]["litemedsam"] = "litemedsam-0123456789ab"
    (out / "config.json").write_text(json.dumps(doc))
    before = snapshot(out)
    with pytest.raises(BenchError, match=r"other model weights.*litemedsam-0123456789ab"):
        run(CONFIG, out, make_policies(), tiny)
    assert snapshot(out) == before

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "results.json").write_text("{}")
    with pytest.raises(BenchError, match="no config.json"):
        run(CONFIG, stray, make_policies(), tiny)
    assert [p.name for p in stray.iterdir()] == ["results.json"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"policies": ("boxer", "nope")}, r"unknown policy 'nope'; known: .*oracle_box.*boxer"),
        ({"datasets": ("no-such-data",)}, r"dataset 'no-such-data'.*demo"),
        ({"segmenters": ("nope",)}, r"unknown segmenter 'nope'; known: .*litemedsam"),
        ({"policy_budgets": {"ghost": 2}}, r"budget is given for 'ghost'"),
        ({"policies": ("boxer", "ritm:bogus=1")}, r"policy spec 'ritm:bogus=1'"),
        ({"segmenters": ("nope:work_size=32",)}, r"unknown segmenter 'nope'"),
        ({"segmenters": ("classical:64",)}, r"segmenter spec 'classical:64': option '64'"),
    ],
)
def test_bad_names_are_refused_before_writing(change, message, tiny, make_policies, tmp_path):
    config = BenchConfig(**{**CONFIG.to_dict(), **change})
    with pytest.raises(BenchError, match=message):
        run(config, tmp_path / "out", make_policies(), tiny)
    assert not (tmp_path / "out").exists()


def test_an_empty_dataset_folder_is_refused(tmp_path, make_policies):
    (tmp_path / "empty").mkdir()
    config = BenchConfig(policies=("boxer",), datasets=(str(tmp_path / "empty"),))
    with pytest.raises(BenchError, match="empty"):
        run_benchmark(config, tmp_path / "out", policies=make_policies(), progress=False)
    assert not (tmp_path / "out").exists()


def test_registered_policies_and_spec_options(tiny, tmp_path):
    config = BenchConfig(
        policies=("oracle_box", "ritm:first_box=true"), datasets=("tiny",), budget=2
    )
    out = tmp_path / "out"
    result = run_benchmark(config, out, datasets={"tiny": tiny}, progress=False, plots=False)
    by_policy = {r["policy"]: r for r in result.summary if r["modality"] == "all"}
    assert by_policy["oracle_box"]["dice_t1_mean"] > 0.6
    assert by_policy["oracle_box"]["stop_rate"] == 1.0  # box, then stop
    # first_box=true reached the policy: its first action is a box, not a refused click.
    ritm = [r for r in result.records if r.policy == "ritm:first_box=true"]
    assert {r.steps[0].action for r in ritm} == {"box"}
    assert {r.steps[0].invalid for r in ritm} == {None}


def test_segmenter_spec_options_reach_the_backend(tiny, tmp_path):
    """``name:key=value`` segmenter specs (how a checkpoint path reaches ``medsam2``): the
    options build the backend, and the spec labels its results and its recorded weights."""
    spec = "classical:work_size=32,algorithm=grabcut"
    segmenter = shared_segmenter(spec)
    assert (segmenter.work_size, segmenter.algorithm) == (32, "grabcut")
    assert segmenter.model_id != shared_segmenter("classical").model_id
    config = BenchConfig(
        policies=("oracle_box",), datasets=("tiny",), segmenters=("classical", spec), budget=2
    )
    out = tmp_path / "out"
    result = run_benchmark(config, out, datasets={"tiny": tiny}, progress=False, plots=False)
    assert {r.segmenter for r in result.records} == {"classical", spec}
    doc = json.loads((out / "config.json").read_text())
    assert doc["models"][spec] == segmenter.model_id
    finals = {
        seg: [r.steps[-1].dice for r in result.records if r.segmenter == seg]
        for seg in ("classical", spec)
    }
    assert finals["classical"] != finals[spec]  # another algorithm, other masks


def test_limited_datasets_take_a_seeded_subset():
    demo = demo_dataset()
    pick = select_samples(demo, "demo", BenchConfig(limit=5, seed=3))
    assert pick == select_samples(demo, "demo", BenchConfig(limit=5, seed=3))
    assert pick == sorted(pick) and len(set(pick)) == 5
    assert pick != select_samples(demo, "demo", BenchConfig(limit=5, seed=4))
    assert select_samples(demo, "demo", BenchConfig(limit=5, subset="first")) == [0, 1, 2, 3, 4]
    assert select_samples(demo, "demo", BenchConfig(limit=500)) == list(range(len(demo)))


@pytest.mark.parametrize(
    ("protocol", "prompting"),
    [("medsam_agent", "medsam_agent_eval"), ("medsam_agent_rl", "medsam_agent_rl")],
)
def test_a_text_policy_runs_with_its_protocols_env_options(protocol: str, prompting: str) -> None:
    """MedSAM-Agent's protocols are benchmarked as released: the sample's own resolution,
    the corners as written, any box, the protocol's segmenter call (and the run's budget)."""
    from medseg_agents.mllm import VLLMPolicy
    from medseg_bench.episode import Resources
    from medseg_bench.plan import make_plan

    demo = demo_dataset()
    small = Dataset([demo[0]], name="one")
    label = f"vllm:model=m,protocol={protocol}"
    config = BenchConfig(policies=(label,), datasets=("one",), segmenters=("classical",), budget=4)
    plan = make_plan(config, {label: VLLMPolicy("m", protocol=protocol)}, {"one": small})
    env = Resources(plan).env(plan.episodes[0]).unwrapped
    assert (env.native_resolution, env.sort_box_corners, env.min_box_size) == (True, False, 0.0)
    assert env.prompting == prompting and env.max_turns == 4
