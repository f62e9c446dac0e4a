"""The guard on TRL's private method that ``MedSAMAgentGRPOTrainer`` overrides.

``_generate_and_score_completions`` is private to TRL and may change in any release; the
override was written against one signature. The first test fails as soon as the installed
TRL's signature differs; the others check that the trainer refuses such a TRL at build time
with a message naming both versions.
"""

from __future__ import annotations

import inspect

import pytest

trl = pytest.importorskip("trl", reason="the TRL adapter needs trl (pip install trl==1.16.0)")

from trl import GRPOTrainer  # noqa: E402

from medseg_agents.training.trl.trl_rollout import (  # noqa: E402
    TRL_WRITTEN_FOR,
    WRITTEN_SIGNATURE,
    MedSAMAgentGRPOTrainer,
    check_trl_override,
)


def test_the_overridden_method_has_the_signature_the_override_was_written_for() -> None:
    found = str(inspect.signature(GRPOTrainer._generate_and_score_completions))
    assert found == WRITTEN_SIGNATURE, (
        f"TRL {trl.__version__} changed GRPOTrainer._generate_and_score_completions to "
        f"{found} (written against TRL {TRL_WRITTEN_FOR}: {WRITTEN_SIGNATURE}); check "
        "MedSAMAgentGRPOTrainer's override before updating WRITTEN_SIGNATURE"
    )
    check_trl_override()  # the installed TRL passes the runtime check


class _ChangedTRL:
    """A trainer whose private method took one more parameter, as a later TRL might."""

    def _generate_and_score_completions(self, inputs, generation_batch):
        return {}


class _RemovedTRL:
    """A trainer without the method."""


@pytest.mark.parametrize(
    ("base", "found"),
    [
        (_ChangedTRL, r"has _generate_and_score_completions\(self, inputs, generation_batch\)"),
        (_RemovedTRL, "has no such method"),
    ],
)
def test_the_runtime_check_names_the_trl_versions(base: type, found: str) -> None:
    with pytest.raises(RuntimeError, match=found) as caught:
        check_trl_override(base)
    message = str(caught.value)
    assert f"installed TRL {trl.__version__}" in message
    assert f"as TRL {TRL_WRITTEN_FOR} defines it" in message and "trl==1.16.0" in message


def test_the_trainer_runs_the_check_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        GRPOTrainer,
        "_generate_and_score_completions",
        _ChangedTRL._generate_and_score_completions,
    )
    with pytest.raises(RuntimeError, match="generation_batch"):
        MedSAMAgentGRPOTrainer(model=None)
