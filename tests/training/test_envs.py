"""``medseg_agents.training.envs.with_shared_segmenter``: the env options every trainer adapter
builds its envs with, so concurrent rollouts load one model."""

from __future__ import annotations

from medseg_agents.training.envs import with_shared_segmenter
from medseg_env.env import default_config
from medseg_env.segmenters import Classical, shared_segmenter


def test_the_segmenter_option_becomes_the_shared_instance() -> None:
    options = {"segmenter": "classical", "segmenter_kwargs": {"work_size": 32}, "obs_size": 64}
    first, second = with_shared_segmenter(options), with_shared_segmenter(options)
    assert first["segmenter"] is second["segmenter"] is shared_segmenter("classical:work_size=32")
    assert "segmenter_kwargs" not in first and first["obs_size"] == 64
    assert options["segmenter"] == "classical"  # the caller's mapping is left as it was
    own = Classical()
    assert with_shared_segmenter({"segmenter": own})["segmenter"] is own
    default = with_shared_segmenter({})["segmenter"]
    assert default is shared_segmenter(default_config()["segmenter"])
