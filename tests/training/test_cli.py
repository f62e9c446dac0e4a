"""``medseg-train`` (``medseg_agents.training.cli``): one subcommand per trainer, each module's
own options, bad input as status 2."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from medseg_agents.training.cli import COMMANDS, main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_builds_its_parser(name: str) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"medseg-train {name}")
    module.add_arguments(parser)
    assert callable(module.run)
    assert any(a.dest == "out" for a in parser._actions), "every trainer writes to --out"


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "ppo"
    assert main(["ppo", "--dataset", "demo-heldout", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg-train ppo: error: medseg-train ppo --dataset: dataset ")
    assert "'demo-heldout' is held out" in err and not out.exists()
    with pytest.raises(SystemExit) as caught:
        main(["nope"])
    assert caught.value.code == 2


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "medseg_agents.training", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(name in done.stdout for name in COMMANDS)
