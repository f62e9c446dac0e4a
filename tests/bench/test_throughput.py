"""``python -m medseg_bench.throughput --backends`` and ``--decoders``: the rows, not the
speeds (timings belong to the benchmark, never to a timed test)."""

from __future__ import annotations

import itertools

from medseg_bench import throughput
from medseg_env.segmenters.onnx_decoder import LOGIT_ATOL


def test_interleaved_ms_times_the_calls_round_robin() -> None:
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    result = throughput.interleaved_ms(calls, repeats=3)
    assert order == ["a", "b", "c"] * 3  # one of each per round
    assert set(result) == {"a", "b", "c"} and all(v >= 0 for v in result.values())


def test_backend_table_rows() -> None:
    rows = throughput.backend_table(1, ["classical", "litemedsam"], encode_repeats=1)
    by_name = {r["backend"]: r for r in rows}
    assert by_name["classical"]["prompts"] == "box+point" and by_name["classical"]["input"] == 64
    assert by_name["litemedsam"]["prompts"] == "box" and by_name["litemedsam"]["input"] == 256
    assert by_name["litemedsam"]["click_ms"] is None  # box-only: no click step
    assert by_name["litemedsam"]["decoder"] == "onnx"  # its default on the CPU
    assert by_name["classical"]["decoder"] is None  # not a SAM-family backend
    for row, key in itertools.product(rows, ("encode_ms", "box_ms")):
        assert isinstance(row[key], float) and row[key] > 0
    assert isinstance(by_name["classical"]["click_ms"], float)


def test_decoder_bench_times_both_decoders(capsys) -> None:
    result = throughput.decoder_bench(repeats=1, warmup=0)
    for key in ("eager_box_ms", "onnx_box_ms", "eager_click_ms", "onnx_click_ms"):
        assert result[key] > 0
    assert result["max_logit_diff"] <= LOGIT_ATOL
    throughput.print_decoder_bench("litemedsam_clicks", 1, result)
    assert "| box |" in capsys.readouterr().out
