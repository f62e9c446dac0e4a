"""Test helpers that ship with the package but that ``import medseg_agents`` never imports.

- ``medseg_agents.testing.tiny_qwen``: builds a tiny random-weight Qwen3-VL (or Qwen2.5-VL)
  model folder offline, about 1 MB, for the MLLM policy and trainer tests and the CPU learning
  demo (``python -m medseg_agents.testing.tiny_qwen OUT_DIR``). It needs ``transformers``,
  ``tokenizers`` and ``torch`` (the ``mllm`` extra).
"""
