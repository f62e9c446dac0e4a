"""The SFT export (moving here from ``medseg_bench.export_sft``) and its LLaMA-Factory config
(``configs/llamafactory_sft.yaml``)."""
