"""``medseg_env.segmenters.shared_segmenter``: the one per-process segmenter cache that the
benchmark, the SFT export and the TRL and verl adapters share."""

from __future__ import annotations

import pytest

from medseg_env.registry import UnknownNameError
from medseg_env.segmenters import Classical, shared_segmenter


def test_one_instance_per_name_and_options_however_spelt() -> None:
    plain = shared_segmenter("classical")
    assert isinstance(plain, Classical) and shared_segmenter("classical") is plain
    tuned = shared_segmenter("classical:work_size=32,algorithm=grabcut")
    assert tuned is not plain and (tuned.work_size, tuned.algorithm) == (32, "grabcut")
    # the same options as a spec, as keywords, or in another order: the same model
    assert shared_segmenter("classical:algorithm=grabcut,work_size=32") is tuned
    assert shared_segmenter("classical", work_size=32, algorithm="grabcut") is tuned
    assert shared_segmenter("classical:work_size=32", algorithm="grabcut") is tuned


def test_an_instance_passes_through_and_bad_input_is_named() -> None:
    own = Classical()
    assert shared_segmenter(own) is own
    with pytest.raises(ValueError, match="segmenter options apply only"):
        shared_segmenter(own, work_size=32)
    with pytest.raises(UnknownNameError, match="unknown segmenter 'nope'"):
        shared_segmenter("nope")
    with pytest.raises(ValueError, match="option 'x' is not key=value"):
        shared_segmenter("classical:x")
    with pytest.raises(ValueError, match="options must be JSON values"):
        shared_segmenter("classical", work_size=object())
