"""``medseg-train export-sft`` (``medseg_agents.training.sft``): trajectories replay,
byte-identical reruns, resume, the TRL and LLaMA-Factory formats, the split, and a corrupted
reply failing the replay check.

Exports run on real bundled ``demo`` samples with the registered weight-free ``classical``
backend (milliseconds a call); the last test exports and replays one trajectory of the real
default model.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest

from medseg_agents.oracle import HybridExpert
from medseg_agents.training import sft as X
from medseg_agents.training.cli import main
from medseg_agents.training.sft import export as export_module
from medseg_env.data import Dataset
from medseg_env.data.split import split_groups
from medseg_env.text import ToolCall, get_protocol

SEG = "classical"  # the real weight-free backend: milliseconds a call
FAST = ["-s", SEG, "--no-progress", "--records", "both"]
LIMIT = 4


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export of the first 4 planned trajectories (both formats, both record kinds)."""
    out = tmp_path_factory.mktemp("sft") / "a"
    assert main(["export-sft", *FAST, "--limit", str(LIMIT), "--out", str(out)]) == 0
    return out


def test_export_replays_on_real_samples(exported: Path, capsys) -> None:
    stats = json.loads((exported / X.STATS_FILE).read_text())
    report = X.verify(exported)
    assert report.checked == stats["trajectories"] == LIMIT
    assert report.turns == stats["turns"] > LIMIT  # a prompt and the stop at least
    assert report.rows == 2 * LIMIT + 2 * stats["turns"]  # 2 formats x (trajectory + turn rows)
    assert report.min_dice == 1.0 and report.failures == []
    assert stats["rows"] == {
        X.TRL_FILE: LIMIT,
        X.LF_FILE: LIMIT,
        X.TRL_TURNS_FILE: stats["turns"],
        X.LF_TURNS_FILE: stats["turns"],
    }
    entries = [json.loads(line) for line in (exported / X.JOURNAL_FILE).read_text().splitlines()]
    assert {e["style"] for e in entries} == {"box", "click"}  # the default mix draws both here
    for entry in entries:
        calls = [t["call"]["name"] for t in entry["turns"]]
        assert calls[-1] == "stop_action" and "stop_action" not in calls[:-1]
        assert len(calls) <= 5  # medsam_agent's budget, the last turn the stop
        if entry["style"] == "box":
            assert calls[0] == "add_bbox" and "add_bbox" not in calls[1:]
        else:
            assert "add_bbox" not in calls
    assert main(["export-sft", "--verify", "--out", str(exported), "--no-progress"]) == 0
    assert f"Replay check passed: {LIMIT} trajectories" in capsys.readouterr().out


def test_rerun_and_resume_are_byte_identical(exported: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "b"
    config = X.ExportConfig(segmenter=SEG)
    kwargs = {"formats": X.FORMATS, "records": X.RECORDS, "progress": False}
    first = X.export_sft(config, out, limit=2, **kwargs)  # a run "killed" after 2 trajectories
    assert (first.executed, first.resumed, first.exported) == (2, 0, 2)
    played: list[str] = []
    play = export_module.play

    def counting_play(env, expert, dataset, spec):
        played.append(spec.id)
        return play(env, expert, dataset, spec)

    monkeypatch.setattr(export_module, "play", counting_play)
    second = X.export_sft(config, out, limit=LIMIT, **kwargs)
    assert (second.executed, second.resumed, second.exported) == (2, 2, LIMIT)
    assert len(played) == 2 and played == [e.id for e in X.make_plan(_demo(), config)[2:LIMIT]]
    third = X.export_sft(config, out, limit=LIMIT, **kwargs)  # nothing left to do
    assert (third.executed, third.resumed) == (0, LIMIT) and len(played) == 2
    assert _files(out) == _files(exported)  # same bytes as the uninterrupted CLI run


def _demo() -> Dataset:
    return X.load_export_dataset(X.ExportConfig())


def test_trl_rows_load_with_datasets_and_trl_collator(exported: Path, tmp_path_factory) -> None:
    pytest.importorskip("trl")
    from transformers import AutoProcessor
    from trl.data_utils import prepare_multimodal_messages
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from medseg_agents.testing.tiny_qwen import build_tiny_qwen_vl

    data = X.load_trl_dataset(exported)
    assert data.column_names == ["id", "messages", "images"] and len(data) == LIMIT
    row = data[0]
    assert [m["role"] for m in row["messages"]][:3] == ["system", "user", "assistant"]
    assert row["messages"][1]["content"][0] == {"type": "image"}
    assert all(img.size == (512, 512) for img in row["images"])
    messages = prepare_multimodal_messages(row["messages"], row["images"])
    filled = [p for m in messages for p in m["content"] if p["type"] == "image"]
    assert [p["image"] for p in filled] == row["images"]
    # TRL's own vision collator with a real Qwen3-VL processor (the tiny offline one)
    processor = AutoProcessor.from_pretrained(build_tiny_qwen_vl(tmp_path_factory.mktemp("vlm")))
    batch = DataCollatorForVisionLanguageModeling(processor)([data[0], data[1]])
    start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    per_row = (batch["input_ids"] == start).sum(dim=1).tolist()
    assert per_row == [len(data[0]["images"]), len(data[1]["images"])]
    assert batch["image_grid_thw"].shape[0] == sum(per_row)
    # the turn rows are the env's observation of each turn plus its reply
    turns = _rows(exported / X.TRL_TURNS_FILE)
    assert turns[0]["id"].endswith("/1") and len(turns[0]["images"]) == 1
    assert turns[1]["messages"][:4] == _rows(exported / X.TRL_FILE)[0]["messages"][:4]


def test_llamafactory_schema(exported: Path) -> None:
    """The rules of LLaMA-Factory's ``data/README.md`` and its sharegpt converter."""
    info = json.loads((exported / X.LF_INFO_FILE).read_text())
    assert set(info) == {"medseg_sft", "medseg_sft_turns"}
    for name, entry in info.items():
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "messages", "images": "images"}
        tags = entry["tags"]
        assert (tags["role_tag"], tags["content_tag"]) == ("role", "content")
        assert (tags["user_tag"], tags["assistant_tag"], tags["system_tag"]) == (
            "user",
            "assistant",
            "system",
        )
        rows = _rows(exported / entry["file_name"])
        assert rows, name
        for row in rows:
            messages = row[entry["columns"]["messages"]]
            assert all(set(m) == {"role", "content"} for m in messages)
            assert all(isinstance(m["content"], str) for m in messages)
            assert messages[0]["role"] == "system"  # the converter takes it as the system
            rest = messages[1:]
            assert len(rest) % 2 == 0, "user/assistant pairs"
            assert [m["role"] for m in rest] == ["user", "assistant"] * (len(rest) // 2)
            images = row[entry["columns"]["images"]]
            tokens = sum(len(re.findall(r"<image>", m["content"])) for m in messages)
            assert tokens == len(images) > 0, "one <image> token per image"
            assert all((exported / p).is_file() and not Path(p).is_absolute() for p in images)
            users = [m["content"] for m in rest[::2]]
            assert all(u.startswith("<image>") and u.count("<image>") == 1 for u in users)


def test_split_keeps_groups_disjoint(demo: Dataset) -> None:
    for split_by in X.SPLIT_BY:
        cfg = {"split_by": split_by, "segmenter": SEG}
        train = X.split_indices(demo, X.ExportConfig(split="train", **cfg))
        val = X.split_indices(demo, X.ExportConfig(split="val", **cfg))
        assert sorted(train + val) == list(range(len(demo))) and train and val
        groups = split_groups(demo, split_by)
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        if split_by == "image":  # no pixel-identical image on both sides
            assert not {demo[i].image.tobytes() for i in train} & {
                demo[i].image.tobytes() for i in val
            }
            assert 0.1 < len(val) / len(demo) < 0.3
        # the split depends on split_seed only, not on the trajectories' seed
        other = X.ExportConfig(split="val", seed=7, mix=(("click", 1.0),), **cfg)
        assert X.split_indices(demo, other) == val
    with pytest.raises(X.ExportError, match="held out for the final evaluation"):
        X.load_export_dataset(X.ExportConfig(dataset="demo-heldout"))
    assert main(["export-sft", "-d", "demo-heldout", "--out", "x", "--no-progress"]) == 2
    assert not Path("x").exists()


def test_corrupted_reply_fails_the_replay_check(exported: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    path = bad / X.TRL_FILE
    rows = _rows(path)
    victim = next(r for r in rows if "add_bbox" in r["messages"][2]["content"][0]["text"])
    reply = victim["messages"][2]["content"][0]
    reply["text"] = re.sub(r"\[[\d, ]+\]", "[10, 10, 60, 60]", reply["text"], count=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["export-sft", "--verify", "--out", str(bad), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"replay check failed for 1 of {LIMIT} exported trajectories" in err
    assert f"{victim['id']}: {X.TRL_FILE}: turn 1: replayed mask Dice" in err
    # a re-run of the export rewrites the rows from the journal, and they replay again
    assert main(["export-sft", *FAST, "--limit", str(LIMIT), "--out", str(bad)]) == 0
    # a reply that gives the same masks still differs from the recorded one
    rows = _rows(path)
    rows[0]["messages"][2]["content"][0]["text"] += " "
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(X.ReplayCheckError, match="is not the recorded"):
        X.verify(bad)


def test_bad_options_are_refused(tmp_path: Path) -> None:
    for args in (
        ["--protocol", "nope"],
        ["--mix", "box=0.5,lasso=0.5"],
        ["--target-template", "{organ}"],
        ["--limit", "0"],
    ):
        assert main(["export-sft", "-s", SEG, "--out", str(tmp_path / "o"), *args]) == 2
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="first"):
        HybridExpert(first="lasso")


def test_real_model_trajectory_replays(tmp_path: Path) -> None:
    """One trajectory with the default LiteMedSAM (clicks) model, replayed exactly."""
    # the expert stops once the box is in: two decoder calls and one encoder call
    config = X.ExportConfig(split="all", mix=(("box", 1.0),), target_iou=0.05)
    result = X.export_sft(config, tmp_path / "real", limit=1, progress=False)
    assert result.exported == 1 and result.replay.checked == 1
    assert result.replay.min_dice >= X.REPLAY_MIN_DICE


@pytest.mark.parametrize("protocol", ["medsam_agent_rl", "segagent"])
def test_other_protocols(protocol: str, tmp_path: Path) -> None:
    config = X.ExportConfig(protocol=protocol, segmenter=SEG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = X.export_sft(config, tmp_path, limit=2, records=X.RECORDS, progress=False)
    shows_history = protocol != "segagent"  # SegAgent keeps no past turn
    assert any("never sees" in str(w.message) for w in caught) != shows_history
    assert result.exported == result.replay.checked == 2
    stop = get_protocol(protocol).render(ToolCall("stop_action", {}))
    for row in _rows(tmp_path / X.LF_FILE):
        assert row["messages"][-1] == {"role": "assistant", "content": stop}
        assert sum(m["content"].count("<image>") for m in row["messages"]) == len(row["images"])
    for row in _rows(tmp_path / X.TRL_TURNS_FILE):  # the env's own view of each turn
        kept = get_protocol(protocol).history_turns
        assert len(row["images"]) <= (kept if kept is not None else 99) + 1


def test_a_damaged_journal_is_repaired_by_the_shared_rules(exported: Path, tmp_path: Path) -> None:
    """The export's journal is ``medseg_env.journal.JsonlJournal``: the benchmark's repair rules
    (a torn last line dropped silently, a bad line moved to ``.rejected.jsonl`` with a warning
    naming file and line), and the dropped trajectory is exported again."""
    out = tmp_path / "damaged"
    shutil.copytree(exported, out)
    journal = out / X.JOURNAL_FILE
    lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = "{not json\n"
    journal.write_text("".join(lines) + '{"id": "torn', encoding="utf-8")
    config = X.ExportConfig(segmenter=SEG)
    with pytest.warns(UserWarning, match=r"trajectories.jsonl:2: dropping line 2 \(not valid JSON"):
        result = X.export_sft(
            config, out, limit=LIMIT, formats=X.FORMATS, records=X.RECORDS, progress=False
        )
    assert (result.executed, result.resumed, result.exported) == (1, LIMIT - 1, LIMIT)
    assert (out / "trajectories.rejected.jsonl").read_text(encoding="utf-8") == "{not json\n"
    repaired = journal.read_text(encoding="utf-8")
    assert repaired.endswith("\n") and "torn" not in repaired and len(repaired.splitlines()) == 4
    for name in (X.TRL_FILE, X.LF_FILE, X.TRL_TURNS_FILE, X.LF_TURNS_FILE):
        assert (out / name).read_bytes() == (exported / name).read_bytes(), name
