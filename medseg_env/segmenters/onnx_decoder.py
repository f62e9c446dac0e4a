"""The ``"onnx"`` decoder: SAM's prompt encoder + mask decoder as one ONNX Runtime graph.

Any SAM-family backend takes it (``decoder="onnx"``); the LiteMedSAM backends use it by default
on the CPU (``decoder="auto"``). The image encoder, the embeddings and ``model_id`` are those
of the eager path: only the per-step decoder call runs through ONNX Runtime, on the CPU.

- The graph: ``onnx_graph.RewrittenDecoder`` exported with ``torch.onnx``, one per
  :class:`~medseg_env.segmenters.onnx_graph.Signature` (mask input or not, absorbed attention
  or not), built on first use, offline, from the modules' weights (a few seconds each).
- The cache: ``onnx_cache.GraphCache``, keyed by ``model_id``, the signature, the graph version,
  the opset and a digest of the weights; a later process loads the file.
- Sessions: one per signature, with ``torch.get_num_threads()`` intra-op threads (so
  ``torch.set_num_threads`` sets both paths) that sleep rather than spin when idle: a spinning
  pool slowed whatever ran next on the same cores (the other session, the PyTorch encoder or
  policy) by up to 2×.
- Weights: the graph holds the weights as they were when it was built. When the modules'
  parameters change in place afterwards (an optimiser step, ``load_state_dict``), the next
  call notices (PyTorch's version counters of the parameters) and builds the graph again.

## Equivalence
The logits differ from eager PyTorch's by float rounding only (other summation orders), so a
mask could differ in a pixel whose logit lies within about 1e-4 of zero. On the bundled data
none does: ``tests/segmenters/test_decoder_identity.py`` compares every sample of ``demo`` and
``demo-heldout`` (box, click, box + click with the mask input) and finds the masks identical,
with logits within :data:`LOGIT_ATOL`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .decoders import Decoded, Decoder, DecoderInputs
from .onnx_cache import GraphCache, weights_digest
from .onnx_graph import GRAPH_VERSION, OPSET, Signature, check_layout, decoder_graph
from .onnx_graph import sparse_prompts as sparse_prompts  # re-exported: the graph's prompt form

if TYPE_CHECKING:
    import onnxruntime

LOGIT_ATOL = 1e-3
"""How far the ONNX decoder's low-resolution logits may lie from eager PyTorch's.

Measured on the bundled data: at most 1e-4 (logits span about ±20); the bound is 10× that,
and far below the smallest nonzero |logit| the tests see near a mask's edge."""


class OnnxDecoder(Decoder):
    """The prompt encoder + mask decoder through ONNX Runtime, one session per signature.

    Args:
        prompt_encoder, mask_decoder: SAM's modules (``segment_anything`` or LiteMedSAM's copy);
            ``onnx_graph.check_layout`` must accept them.
        model_id: the segmenter's, for the file names.
        device: must be the CPU (ONNX Runtime's CPU provider).
        cache: where graph files go; a ``GraphCache`` of ``onnx_cache_dir()`` by default.
        threads: ONNX Runtime's intra-op threads; ``torch.get_num_threads()`` when a session
            is made, by default.

    ``graphs_built`` and ``graphs_loaded`` count the graphs this instance built (and wrote) and
    read back from the cache.
    """

    kind = "onnx"

    def __init__(
        self,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        model_id: str,
        device: torch.device | None = None,
        cache: GraphCache | None = None,
        threads: int | None = None,
    ) -> None:
        device = device if device is not None else torch.device("cpu")
        if device.type != "cpu":
            raise ValueError(
                f"decoder='onnx' runs on the CPU (ONNX Runtime's CPU provider); got "
                f"device={str(device)!r}. Use device='cpu' or decoder='eager'."
            )
        check_layout(prompt_encoder, mask_decoder)
        super().__init__(prompt_encoder, mask_decoder, model_id=model_id, device=device)
        self.cache = cache if cache is not None else GraphCache()
        self.threads = threads
        self.graphs_built = 0
        self.graphs_loaded = 0
        self._digest: str | None = None
        self._version = self._weights_version()
        self._sessions: dict[Signature, onnxruntime.InferenceSession] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sessions"] = {}  # sessions do not pickle; they are made again on first use
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._version = self._weights_version()

    def _parameters(self) -> list[torch.Tensor]:
        return [*self.prompt_encoder.parameters(), *self.mask_decoder.parameters()]

    def _weights_version(self) -> tuple[int, ...]:
        """The parameters' identities and in-place version counters: any change to a weight
        (an optimiser step, ``load_state_dict``, a replaced parameter) changes it."""
        return tuple(v for p in self._parameters() for v in (id(p), p._version))

    def cache_key(self, signature: Signature) -> str:
        if self._digest is None:
            self._digest = weights_digest(self.prompt_encoder, self.mask_decoder)
        return f"{self.model_id}.{signature.tag}.g{GRAPH_VERSION}-op{OPSET}-{self._digest[:16]}"

    def path(self, signature: Signature) -> Path:
        """The graph file for ``signature`` in the cache folder."""
        return self.cache.path(self.cache_key(signature))

    def session(self, signature: Signature) -> onnxruntime.InferenceSession:
        """The session for ``signature``, made on first use from the cache or a new graph."""
        version = self._weights_version()
        with self._lock:
            if version != self._version:  # the weights changed since the graphs were built
                self._sessions.clear()
                self._digest, self._version = None, version
            if signature not in self._sessions:
                self._sessions[signature] = self._make_session(signature)
            return self._sessions[signature]

    def _make_session(self, signature: Signature) -> onnxruntime.InferenceSession:
        import onnxruntime

        key = self.cache_key(signature)
        data = self.cache.load(key)
        if data is not None:
            self.graphs_loaded += 1
        else:
            data = self.cache.store(
                key, decoder_graph(self.prompt_encoder, self.mask_decoder, signature)
            )
            self.graphs_built += 1
        options = onnxruntime.SessionOptions()
        # Measured: ORT_ENABLE_ALL was slower than BASIC on this graph (its layout transforms).
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads sleep instead of spinning: a spinning pool took a core from
        # whatever ran next (the other signature's session, the PyTorch encoder or policy, other
        # processes) and doubled its time here; without spinning a lone session was as fast.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def run(
        self,
        features: torch.Tensor,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> Decoded:
        """One prompt set in the graph's form (``sparse_prompts``)."""
        signature = Signature.of(self.mask_decoder, len(labels), mask_input is not None)
        feeds = {
            "image_embeddings": _float_array(features),
            "point_coords": np.ascontiguousarray(coords, np.float32).reshape(-1, 2),
            "point_labels": np.ascontiguousarray(labels, np.int64).reshape(-1),
            "multimask": np.array(bool(multimask)),
        }
        if mask_input is not None:
            feeds["mask_input"] = _float_array(mask_input)
        low_res, score = self.session(signature).run(None, feeds)
        return Decoded(torch.from_numpy(low_res), float(score[0]))

    def decode(self, features: torch.Tensor, inputs: DecoderInputs) -> Decoded:
        coords, labels = sparse_prompts(inputs.points, inputs.boxes)
        return self.run(features, coords, labels, inputs.masks, inputs.multimask)


def _float_array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), np.float32)
