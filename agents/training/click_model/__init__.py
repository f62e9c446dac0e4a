"""The recipe that fine-tuned the shipped ``litemedsam_clicks`` weights, and its evaluation.

LiteMedSAM's prompt encoder and mask decoder are trained for click prompts with SAM's
interactive recipe (image encoder frozen, embeddings cached); the held-out split is never
read. ``medseg_env/segmenters/weights/MODEL_CARD.md`` has the exact commands and results.

* ``python -m medseg_agents.training.click_model.train --out DIR --pyradiomics ... --stardist ...
  --nilearn ...``: train (``train.py``, the command line; ``loop.py``, the loop; ``data.py``,
  the images and the held-out guard; ``prompting.py``, the simulated user; ``losses.py``;
  ``embeddings.py``, the encoder and its cache).
* ``python -m medseg_agents.training.click_model.evaluate --weights FILE --out DIR``: the original
  and the tuned model on the bundled held-out split ``demo-heldout`` (``evaluate.py``).
"""
