"""The recipe that fine-tuned the shipped ``litemedsam_clicks`` weights, and its evaluation.

LiteMedSAM's prompt encoder and mask decoder are trained for click prompts with SAM's
interactive recipe (image encoder frozen, embeddings cached); the held-out split is never
read. ``medseg_env/segmenters/weights/MODEL_CARD.md`` has the exact commands and results.

* ``medseg-train click-model-train --out DIR --pyradiomics ... --stardist ... --nilearn ...``
  (or ``python -m medseg_agents.training.click_model.train``): train (``train.py``, the
  command line; ``loop.py``, the loop; ``data.py``, the images and the held-out guard;
  ``prompting.py``, the simulated user; ``losses.py``; ``embeddings.py``, the encoder and its
  cache).
* ``medseg-train click-model-eval --weights FILE --out DIR`` (or ``python -m
  medseg_agents.training.click_model.evaluate``): the original and the tuned model on the
  bundled held-out split ``demo-heldout`` (``evaluate.py``).
"""
