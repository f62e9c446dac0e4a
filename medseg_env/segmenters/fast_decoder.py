"""The fast decoder path: SAM's prompt encoder and mask decoder as one ONNX Runtime graph.

A backend option of the LiteMedSAM backends (``litemedsam``, ``litemedsam_clicks``), off by
default::

    make_segmenter("litemedsam_clicks", decoder="onnx")
    gym.make("MedSeg-v0", segmenter_kwargs={"decoder": "onnx"})
    medseg-bench run -s 'litemedsam_clicks:decoder=onnx' ...

It needs the ``fast`` extra (``pip install 'medseg-env[fast]'``: ``onnx`` and ``onnxruntime``)
and runs on the CPU. The image encoder, the embeddings and ``model_id`` are unchanged: only the
per-step decoder call (every ``predict``) runs through ONNX Runtime.

## The graph
:func:`decoder_graph` writes the decoder's arithmetic straight into ONNX from the modules'
weights (no ``torch.onnx`` tracing), with batch size 1 and the number of prompt points a
dynamic axis. It computes what ``SamFamilySegmenter.predict`` computes, rearranged:

- Points and box corners are one point list (labels -1 pad, 0/1 clicks, 2/3 box corners), as in
  SAM's own ONNX export, so a box, clicks or both share a graph.
- The image positional encoding (``get_dense_pe``) and the no-mask embedding are constants.
- Everything is a 2-D token matrix (image ``(h*w, C)``, prompts ``(T, C)``): linear layers are
  single ``Gemm`` calls with their bias, and SAM's two 2×2 stride-2 transposed convolutions (and
  the mask input's two 2×2 stride-2 convolutions) are matrix products on token rows, with one
  small reorder of the final ``256×256`` logits instead of transposes of 32-channel images.
- The cross attentions never project the ``h*w`` image tokens: in token→image attention the key
  and value projections move to the query side (``q·(W_k x + b_k) = (W_kᵀq)·x + q·b_k``, and
  ``Σ p_i (W_v x_i + b_v) = W_v Σ p_i x_i + b_v`` since the weights sum to 1); in image→token
  attention the query projection moves to the key side and the output projection to the value
  side. That saves about 40 % of the decoder's arithmetic for a box and a few clicks, but its
  cost grows with the number of tokens ``T`` (5 output tokens + clicks + 2 box corners or a pad
  point): above :data:`ABSORB_MAX_TOKENS` (10 clicks and a box, the env's most at
  ``max_turns=10``) a second graph with SAM's own attention order is used.
- Candidate selection happens in the graph (``multimask`` is an input): the output is the kept
  mask's ``(1, 1, 256, 256)`` logits and its predicted IoU.

## Equivalence
The logits differ from eager PyTorch's by float rounding only (other summation orders), so
masks can differ in a pixel whose logit is within about 1e-4 of zero. Measured on the bundled
demo data with ``litemedsam_clicks`` (boxes, clicks, box + clicks, with and without the mask
input, with and without candidates): see ``tests/segmenters/test_fast_decoder.py``, which holds
every case to Dice >= 0.999 and :data:`LOGIT_ATOL`. In practice the masks were identical: over
990 calls (11 prompt structures on each of the 90 demo samples) no pixel differed, the largest
logit difference was 8e-5 and the largest score difference 6e-7.

## Speed
Eager time over this path's, both timed round-robin in one process on ``--bench``'s steps,
median of 40 rounds, on 2 otherwise idle cores of a Xeon (torch 2.11, onnxruntime 1.30): 2.75×
for a box step (94 → 34 ms) and 2.9× for a click step with the mask input (108 → 38 ms) at 2
threads; 4.0× and 3.8× at 1 thread. ``torch.compile`` (inductor) of the eager modules reached
1.9× there, after 20–90 s of compiling per prompt structure.

## Sessions and threads
One ONNX Runtime session per signature (:class:`Signature`: mask input or not, and the
attention form), made on first use, with ``torch.get_num_threads()`` intra-op threads (so
``torch.set_num_threads`` sets both paths) that sleep rather than spin when idle: a spinning pool
slowed whatever ran next on the same cores (the other session, the PyTorch encoder or policy) by
up to 2×. ``predict_batch`` decodes one request at a time: on a CPU a batched decoder is slower
per item.

## The cache
Each graph is written to the cache folder (:func:`onnx_cache_dir`), named by ``model_id``, the
signature, the graph version, the opset and a digest of the weights, atomically (a temporary
file renamed over it); a later construction loads it. A file that fails to parse, fails its
content digest or was written for another key is rebuilt; an unwritable folder only costs the
rebuild in each process (with a warning).

The graph holds the weights as they were when it was first used: after changing the modules
(training), build a new segmenter.

``python -m medseg_env.segmenters.fast_decoder --bench`` times eager against this path.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import torch
from torch import nn

from ..files import atomic_write
from .base import Segmenter
from .cache import EmbeddingCache
from .sam_family import SamFamilySegmenter
from .types import Embedding, Prediction, PredictRequest, Prompts

if TYPE_CHECKING:
    import onnx
    import onnxruntime

DECODERS = ("eager", "onnx")
"""The values of the LiteMedSAM backends' ``decoder`` option."""

GRAPH_VERSION = 1
"""Bumped whenever :func:`decoder_graph` changes what it writes (it is part of the file name)."""

OPSET = 20  # the first with ONNX's Gelu
ONNX_DIR_ENV = "MEDSEG_ONNX_DIR"
ABSORB_MAX_TOKENS = 17
"""Decoder tokens (5 output tokens + prompt points + box corners or pad) up to which the
absorbed cross attention is used; measured here: equal cost at 17 tokens, slower above."""

LOGIT_ATOL = 1e-3
"""How far the fast path's low-resolution logits may lie from eager PyTorch's (measured: under
1e-4 on the bundled data)."""

_DIGEST_KEY = "medseg_env.sha256"  # metadata: the digest of the model without this entry
_KEY_KEY = "medseg_env.key"  # metadata: the cache key the file was written for


def require_onnxruntime() -> None:
    """Raise ``ImportError`` with the install hint when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "decoder='onnx' needs the onnx and onnxruntime packages: "
            "pip install 'medseg-env[fast]' (or decoder='eager')"
        ) from err


def onnx_cache_dir() -> Path:
    """``$MEDSEG_ONNX_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/medseg-env/onnx``."""
    folder = os.environ.get(ONNX_DIR_ENV)
    if folder:
        return Path(os.path.expandvars(folder)).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().absolute() / "medseg-env" / "onnx"


class Signature(NamedTuple):
    """What a graph is built for: a mask input or not, absorbed cross attention or not."""

    mask_input: bool
    absorbed: bool

    @property
    def tag(self) -> str:
        return ("mask" if self.mask_input else "nomask") + (
            "-absorbed" if self.absorbed else "-plain"
        )


# --- the graph --------------------------------------------------------------------------------


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


class _Graph:
    """The nodes and initializers of one graph, each value with a fresh name."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, dtype: type = np.float32) -> str:
        name = self._name("const")
        array: np.ndarray = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, np.int64), np.int64)

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self._name(op_type.lower())
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reshape(self, x: str, shape: Sequence[int], output: str | None = None) -> str:
        return self.op("Reshape", x, self.ints(shape), output=output)

    def linear(self, x: str, layer: nn.Module) -> str:
        """``nn.Linear`` on a 2-D ``x``: one Gemm with the bias."""
        lin = cast(nn.Linear, layer)
        return self.op(
            "Gemm", x, self.const(_array(lin.weight)), self.const(_array(lin.bias)), transB=1
        )

    def gemm(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """``x @ weight + bias`` for 2-D ``x``."""
        return self.op("Gemm", x, self.const(weight), self.const(bias))

    def layer_norm(self, x: str, norm: Any) -> str:
        """``nn.LayerNorm``, or SAM's ``LayerNorm2d`` on channels-last rows (the same sums)."""
        return self.op(
            "LayerNormalization",
            x,
            self.const(_array(norm.weight)),
            self.const(_array(norm.bias)),
            axis=-1,
            epsilon=float(norm.eps),
        )

    def mlp(self, x: str, module: Any) -> str:
        """SAM's ``MLP``: linear layers with ReLU between them."""
        layers = list(module.layers)
        for index, layer in enumerate(layers):
            x = self.linear(x, layer)
            if index < len(layers) - 1:
                x = self.op("Relu", x)
        return x

    def split_heads(self, x: str, heads: int, perm: Sequence[int]) -> str:
        """``(n, H*d)`` → ``(n, H, d)``, then transposed by ``perm``."""
        return self.op("Transpose", self.reshape(x, [0, heads, -1]), perm=list(perm))


def _attention(g: _Graph, q_in: str, k_in: str, v_in: str, att: Any) -> str:
    """SAM's ``Attention`` on 2-D token matrices, in its own order."""
    heads, internal = int(att.num_heads), int(att.internal_dim)
    q = g.split_heads(g.linear(q_in, att.q_proj), heads, [1, 0, 2])  # (H, Nq, d)
    kt = g.split_heads(g.linear(k_in, att.k_proj), heads, [1, 2, 0])  # (H, d, Nk)
    v = g.split_heads(g.linear(v_in, att.v_proj), heads, [1, 0, 2])  # (H, Nk, d)
    scores = g.op("MatMul", q, kt)
    scores = g.op("Div", scores, g.const(np.float32(math.sqrt(internal // heads))))
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)  # (H, Nq, d)
    out = g.reshape(g.op("Transpose", out, perm=[1, 0, 2]), [-1, internal])
    return g.linear(out, att.out_proj)


def _token_to_image(g: _Graph, q_in: str, k_in: str, v_in: str, att: Any) -> str:
    """Tokens attend to the image without projecting its ``L`` tokens.

    ``q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k``: the key projection moves to the query side, so
    the scores are one ``(H*T, C) × (C, L)`` product; ``Σ p_i (W_v x_i + b_v) = W_v (Σ p_i x_i)
    + b_v`` (softmax weights sum to 1): the value projection follows the weighted sum.
    """
    heads, internal, c = int(att.num_heads), int(att.internal_dim), int(att.embedding_dim)
    d = internal // heads
    scale = 1 / math.sqrt(d)
    wk, bk = _array(att.k_proj.weight), _array(att.k_proj.bias)
    wv, bv = _array(att.v_proj.weight), _array(att.v_proj.bias)
    q = g.split_heads(g.linear(q_in, att.q_proj), heads, [1, 0, 2])  # (H, T, d)
    qk = g.reshape(g.op("MatMul", q, g.const(wk.reshape(heads, d, c))), [-1, c])  # (H*T, C)
    qb = g.reshape(g.op("MatMul", q, g.const(bk.reshape(heads, d, 1))), [-1, 1])  # (H*T, 1)
    scores = g.op("Gemm", qk, k_in, qb, transB=1, alpha=scale, beta=scale)  # (H*T, L)
    mixed = g.op("MatMul", g.op("Softmax", scores, axis=-1), v_in)  # (H*T, C)
    mixed = g.reshape(mixed, [heads, -1, c])  # (H, T, C)
    out = g.op("MatMul", mixed, g.const(wv.reshape(heads, d, c).transpose(0, 2, 1)))
    out = g.op("Add", out, g.const(bv.reshape(heads, 1, d)))  # (H, T, d)
    out = g.reshape(g.op("Transpose", out, perm=[1, 0, 2]), [-1, internal])
    return g.linear(out, att.out_proj)


def _image_to_token(g: _Graph, q_in: str, k_in: str, v_in: str, att: Any) -> str:
    """The image attends to the tokens without projecting its ``L`` tokens.

    The query projection moves to the key side (scores: one ``(L, C) × (C, H*T)`` product)
    and the output projection to the value side (``(L, H*T) × (H*T, C)``).
    """
    heads, internal, c = int(att.num_heads), int(att.internal_dim), int(att.embedding_dim)
    d = internal // heads
    scale = 1 / math.sqrt(d)
    wq, bq = _array(att.q_proj.weight), _array(att.q_proj.bias)
    wo, bo = _array(att.out_proj.weight), _array(att.out_proj.bias)
    kt = g.split_heads(g.linear(k_in, att.k_proj), heads, [1, 2, 0])  # (H, d, T)
    v = g.split_heads(g.linear(v_in, att.v_proj), heads, [1, 0, 2])  # (H, T, d)
    qk = g.op("MatMul", g.const(wq.reshape(heads, d, c).transpose(0, 2, 1)), kt)  # (H, C, T)
    qk = g.reshape(g.op("Transpose", qk, perm=[1, 0, 2]), [c, -1])  # (C, H*T)
    qb = g.reshape(g.op("MatMul", g.const(bq.reshape(heads, 1, d)), kt), [1, -1])  # (1, H*T)
    scores = g.op("Gemm", q_in, qk, qb, alpha=scale, beta=scale)  # (L, H*T)
    weights = g.op("Softmax", g.reshape(scores, [0, heads, -1]), axis=-1)
    weights = g.reshape(weights, [0, -1])  # (L, H*T)
    vo = g.op("MatMul", v, g.const(wo.reshape(c, heads, d).transpose(1, 2, 0)))  # (H, T, C)
    return g.op("Gemm", weights, g.reshape(vo, [-1, c]), g.const(bo))


def _check_layout(prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
    """Raise ``ValueError`` unless the modules are laid out as SAM's, as the graph assumes."""
    enc, dec = cast(Any, prompt_encoder), cast(Any, mask_decoder)
    try:
        relus = [layer.mlp.act for layer in dec.transformer.layers]
        gelus = [dec.output_upscaling[i] for i in (2, 4)]
        gelus += [enc.mask_downscaling[i] for i in (2, 5)]
        strided = [dec.output_upscaling[i] for i in (0, 3)]
        strided += [enc.mask_downscaling[i] for i in (0, 3)]
    except (AttributeError, IndexError, TypeError) as err:
        raise ValueError(f"not SAM's prompt encoder and mask decoder: {err}") from err
    if not (
        relus
        and all(type(m) is nn.ReLU for m in relus)
        and all(type(m) is nn.GELU and m.approximate == "none" for m in gelus)
        and all(tuple(m.kernel_size) == (2, 2) and tuple(m.stride) == (2, 2) for m in strided)
    ):
        raise ValueError(
            "the fast decoder path needs SAM's prompt encoder and mask decoder layout: ReLU "
            "in the transformer's MLPs, exact GELU, 2x2 stride-2 up- and downscaling"
        )


def decoder_graph(
    prompt_encoder: nn.Module, mask_decoder: nn.Module, signature: Signature
) -> onnx.ModelProto:
    """SAM's prompt encoder + mask decoder (``segment_anything`` layout) as an ONNX model.

    Inputs:
        ``image_embeddings`` ``(1, C, h, w)`` float; ``point_coords`` ``(N, 2)`` float, SAM's
        model-input pixel coordinates (``prompt_tensors``: before SAM's +0.5); ``point_labels``
        ``(N,)`` int64: 0/1 clicks, 2/3 the box's corners, -1 SAM's pad point (added when there is
        no box); ``multimask`` bool scalar; with ``signature.mask_input``, ``mask_input``
        ``(1, 1, 4h, 4w)`` float (the previous logits).

    Outputs:
        ``low_res_masks`` ``(1, 1, 4h, 4w)``: the kept mask's logits, the first mask, or with
        ``multimask`` the best-scored of the other three (SAM's ``multimask_output`` and argmax);
        ``score`` ``(1,)``: its predicted IoU.
    """
    from onnx import TensorProto, checker, helper

    _check_layout(prompt_encoder, mask_decoder)
    enc, dec = cast(Any, prompt_encoder), cast(Any, mask_decoder)
    transformer = dec.transformer
    g = _Graph()
    c = int(enc.embed_dim)
    eh, ew = (int(v) for v in enc.image_embedding_size)
    ih, iw = (int(v) for v in enc.input_image_size)
    n = eh * ew  # image tokens
    inputs = [
        helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, c, eh, ew]),
        helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, ["points", 2]),
        helper.make_tensor_value_info("point_labels", TensorProto.INT64, ["points"]),
        helper.make_tensor_value_info("multimask", TensorProto.BOOL, []),
    ]
    if signature.mask_input:
        shape = [1, 1, 4 * eh, 4 * ew]
        inputs.append(helper.make_tensor_value_info("mask_input", TensorProto.FLOAT, shape))

    # Sparse prompts (N, C): PromptEncoder._embed_points / _embed_boxes, one list.
    xy = g.op("Add", "point_coords", g.const(np.float32(0.5)))
    xy = g.op("Div", xy, g.const(np.array([iw, ih], np.float32)))
    xy = g.op("Sub", g.op("Mul", xy, g.const(np.float32(2))), g.const(np.float32(1)))
    gaussian = _array(enc.pe_layer.positional_encoding_gaussian_matrix)
    xy = g.op("Mul", g.op("MatMul", xy, g.const(gaussian)), g.const(np.float32(2 * np.pi)))
    fourier = g.op("Concat", g.op("Sin", xy), g.op("Cos", xy), axis=-1)
    is_point = g.op("Not", g.op("Equal", "point_labels", g.const(np.int64(-1), np.int64)))
    keep = g.op("Unsqueeze", g.op("Cast", is_point, to=TensorProto.FLOAT), g.ints([-1]))
    label_rows = [enc.not_a_point_embed.weight, *(e.weight for e in enc.point_embeddings)]
    table = g.const(np.concatenate([_array(w) for w in label_rows]))  # label + 1 → row
    row = g.op("Add", "point_labels", g.const(np.int64(1), np.int64))
    sparse = g.op("Add", g.op("Mul", fourier, keep), g.op("Gather", table, row, axis=0))
    output_tokens = np.concatenate([_array(dec.iou_token.weight), _array(dec.mask_tokens.weight)])
    tokens = g.op("Concat", g.const(output_tokens), sparse, axis=0)  # (T, C)

    # Dense: image tokens (L, C) plus the mask embedding or the no-mask embedding.
    image = g.op("Transpose", g.reshape("image_embeddings", [c, n]), perm=[1, 0])
    if signature.mask_input:
        conv1, norm1, _, conv2, norm2, _, conv3 = enc.mask_downscaling
        c1, c2 = int(conv1.out_channels), int(conv2.out_channels)
        # Rows of 4×4 pixel blocks: pixel (4p + 2a' + a, 4q + 2b' + b) → row (p, q, a', b').
        m = g.reshape("mask_input", [eh, 2, 2, ew, 2, 2])
        m = g.reshape(g.op("Transpose", m, perm=[0, 3, 1, 4, 2, 5]), [4 * n, 4])
        w1 = _array(conv1.weight)[:, 0].reshape(c1, 4).T  # (a b, out)
        y = g.op("Gelu", g.layer_norm(g.gemm(m, w1, _array(conv1.bias)), norm1))
        w2 = _array(conv2.weight).transpose(2, 3, 1, 0).reshape(4 * c1, c2)  # (a' b' in, out)
        y = g.gemm(g.reshape(y, [n, 4 * c1]), w2, _array(conv2.bias))
        y = g.op("Gelu", g.layer_norm(y, norm2))
        dense = g.gemm(y, _array(conv3.weight)[:, :, 0, 0].T, _array(conv3.bias))
        keys = g.op("Add", image, dense)
    else:
        keys = g.op("Add", image, g.const(_array(enc.no_mask_embed.weight)[0]))
    key_pe = g.const(_array(enc.get_dense_pe()).reshape(c, n).T)  # (L, C), a constant

    # TwoWayTransformer.
    to_image = _token_to_image if signature.absorbed else _attention
    to_tokens = _image_to_token if signature.absorbed else _attention
    queries, query_pe = tokens, tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attention(g, queries, queries, queries, layer.self_attn)
        else:
            q = g.op("Add", queries, query_pe)
            attn = _attention(g, q, q, queries, layer.self_attn)
            queries = g.op("Add", queries, attn)
        queries = g.layer_norm(queries, layer.norm1)
        k = g.op("Add", keys, key_pe)
        q = g.op("Add", queries, query_pe)
        attn = to_image(g, q, k, keys, layer.cross_attn_token_to_image)
        queries = g.layer_norm(g.op("Add", queries, attn), layer.norm2)
        hidden = g.op("Relu", g.linear(queries, layer.mlp.lin1))
        queries = g.op("Add", queries, g.linear(hidden, layer.mlp.lin2))
        queries = g.layer_norm(queries, layer.norm3)
        q = g.op("Add", queries, query_pe)
        attn = to_tokens(g, k, q, queries, layer.cross_attn_image_to_token)
        keys = g.layer_norm(g.op("Add", keys, attn), layer.norm4)
    q = g.op("Add", queries, query_pe)
    k = g.op("Add", keys, key_pe)
    attn = to_image(g, q, k, keys, transformer.final_attn_token_to_image)
    tokens_out = g.layer_norm(g.op("Add", queries, attn), transformer.norm_final_attn)

    # The kept mask: token 1 (index 0 of the masks), or with multimask the best of 2-4.
    n_masks = int(dec.num_mask_tokens)
    iou_token = g.op("Gather", tokens_out, g.ints([0]), axis=0)
    iou = g.reshape(g.mlp(iou_token, dec.iou_prediction_head), [-1])  # (n_masks,)
    candidates = g.op("Slice", iou, g.ints([1]), g.ints([n_masks]))
    best_candidate = g.op("Add", g.op("ArgMax", candidates, axis=0), g.ints([1]))
    best = g.op("Where", "multimask", best_candidate, g.ints([0]))  # (1,)
    g.op("Gather", iou, best, axis=0, output="score")
    hyper = [
        g.mlp(g.op("Gather", tokens_out, g.ints([1 + i]), axis=0), mlp)
        for i, mlp in enumerate(dec.output_hypernetworks_mlps)
    ]
    hyper_kept = g.op("Gather", g.op("Concat", *hyper, axis=0), best, axis=0)  # (1, C/8)

    # Output upscaling: each 2×2 stride-2 transposed convolution is a product on token rows.
    # Row (p, a, b) of the first (L*4, C/4), row (p, a, b, a2, b2) of the second.
    up1, norm, _, up2, _ = dec.output_upscaling
    o1, o2 = int(up1.out_channels), int(up2.out_channels)
    w1 = _array(up1.weight).transpose(0, 2, 3, 1).reshape(c, 4 * o1)
    y = g.reshape(g.gemm(keys, w1, np.tile(_array(up1.bias), 4)), [4 * n, o1])
    y = g.op("Gelu", g.layer_norm(y, norm))
    w2 = _array(up2.weight).transpose(0, 2, 3, 1).reshape(o1, 4 * o2)
    y = g.op("Gelu", g.gemm(y, w2, np.tile(_array(up2.bias), 4)))  # (4L, 4*o2)
    # The hypernetwork's dot product for the 4 sub-pixels of a row at once: a block-diagonal
    # (4*o2, 4) matrix.
    eye = g.const(np.eye(4, dtype=np.float32)[:, None, :])
    blocks = g.reshape(g.op("Mul", eye, g.reshape(hyper_kept, [1, o2, 1])), [4 * o2, 4])
    logits = g.reshape(g.op("MatMul", y, blocks), [eh, ew, 2, 2, 2, 2])  # (p, q, a, b, a2, b2)
    logits = g.op("Transpose", logits, perm=[0, 2, 4, 1, 3, 5])  # row 4p+2a+a2, col 4q+2b+b2
    g.reshape(logits, [1, 1, 4 * eh, 4 * ew], output="low_res_masks")

    outputs = [
        helper.make_tensor_value_info("low_res_masks", TensorProto.FLOAT, [1, 1, 4 * eh, 4 * ew]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, [1]),
    ]
    graph = helper.make_graph(
        g.nodes, f"sam_decoder_{signature.tag}", inputs, outputs, g.initializers
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="medseg_env"
    )
    model.ir_version = 9  # what onnxruntime 1.17+ reads; onnx's newest may be ahead of it
    checker.check_model(model)
    return model


def sparse_prompts(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray]:
    """``prompt_tensors``' output as the graph's ``(point_coords (N, 2), point_labels (N,))``.

    The clicks, then the box's two corners (labels 2 and 3), or SAM's pad point (label -1) when
    there are clicks and no box, as ``PromptEncoder`` orders its sparse embeddings.
    """
    coords, labels = [np.zeros((0, 2), np.float32)], [np.zeros((0,), np.int64)]
    if points is not None:
        coords.append(points[0][0].cpu().numpy().astype(np.float32))
        labels.append(points[1][0].cpu().numpy().astype(np.int64))
    if boxes is not None:
        coords.append(boxes.reshape(2, 2).cpu().numpy().astype(np.float32))
        labels.append(np.array([2, 3], np.int64))
    elif points is not None:
        coords.append(np.full((1, 2), -0.5, np.float32))  # SAM pads at (0, 0) after its +0.5
        labels.append(np.array([-1], np.int64))
    return np.concatenate(coords), np.concatenate(labels)


# --- the runtime ------------------------------------------------------------------------------


def weights_digest(*modules: nn.Module) -> str:
    """SHA-256 of the modules' state (names, shapes, dtypes and bytes), in order."""
    digest = hashlib.sha256()
    for module in modules:
        for name, value in module.state_dict().items():
            array = value.detach().cpu().contiguous().numpy()
            digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _model_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized model without its digest entry."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [p for p in copy.metadata_props if p.key != _DIGEST_KEY]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return hashlib.sha256(copy.SerializeToString()).hexdigest()


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


class OnnxDecoder:
    """The prompt encoder + mask decoder through ONNX Runtime, one session per signature.

    Args:
        prompt_encoder, mask_decoder: SAM's modules (``segment_anything`` or LiteMedSAM's copy).
        model_id: the segmenter's, for the file names.
        cache_dir: where graph files go; :func:`onnx_cache_dir` by default.
        threads: ONNX Runtime's intra-op threads; ``torch.get_num_threads()`` when a session
            is made, by default (so ``torch.set_num_threads`` applies to both paths).

    ``graphs_built`` and ``graphs_loaded`` count the graphs this instance built (and wrote) and
    read back from the cache.
    """

    def __init__(
        self,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        model_id: str,
        *,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        require_onnxruntime()
        self.prompt_encoder, self.mask_decoder = prompt_encoder, mask_decoder
        self.model_id = model_id
        self.cache_dir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
        self.threads = threads
        self.graphs_built = 0
        self.graphs_loaded = 0
        self._digest: str | None = None
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

    def cache_key(self, signature: Signature) -> str:
        if self._digest is None:
            self._digest = weights_digest(self.prompt_encoder, self.mask_decoder)
        return (
            f"{_safe(self.model_id)}.{signature.tag}.g{GRAPH_VERSION}-op{OPSET}-{self._digest[:16]}"
        )

    def path(self, signature: Signature) -> Path:
        """The graph file for ``signature`` in the cache folder."""
        return self.cache_dir / f"{self.cache_key(signature)}.onnx"

    def session(self, signature: Signature) -> onnxruntime.InferenceSession:
        """The session for ``signature``, made on first use from the cache or a new graph."""
        found = self._sessions.get(signature)
        if found is not None:
            return found
        with self._lock:
            if signature not in self._sessions:
                self._sessions[signature] = self._make_session(signature)
            return self._sessions[signature]

    def _make_session(self, signature: Signature) -> onnxruntime.InferenceSession:
        import onnxruntime

        data = self._load(signature)
        if data is None:
            data = self._build(signature)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle worker threads sleep instead of spinning: a spinning pool took a core from
        # whatever ran next (the other signature's session, the PyTorch encoder or policy, other
        # processes) and doubled its time here; without spinning a lone session was as fast.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def _load(self, signature: Signature) -> bytes | None:
        """The cached graph's bytes, or None when it is missing or not ours and intact."""
        import onnx

        path = self.path(signature)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            model = onnx.load_model_from_string(data)
        except Exception:  # protobuf's DecodeError and whatever else a damaged file raises
            return None
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get(_KEY_KEY) != self.cache_key(signature):
            return None
        if meta.get(_DIGEST_KEY) != _model_digest(model):
            return None
        self.graphs_loaded += 1
        return data

    def _build(self, signature: Signature) -> bytes:
        """Build the graph and write it to the cache atomically (a failed write only warns)."""
        import onnx

        model = decoder_graph(self.prompt_encoder, self.mask_decoder, signature)
        key = self.cache_key(signature)
        onnx.helper.set_model_props(model, {_KEY_KEY: key})
        onnx.helper.set_model_props(model, {_KEY_KEY: key, _DIGEST_KEY: _model_digest(model)})
        data = model.SerializeToString()
        self.graphs_built += 1
        path = self.path(signature)
        try:
            atomic_write(path, data, make_parents=True)
        except OSError as err:
            warnings.warn(
                f"could not write the decoder graph to {path} ({err}); it is rebuilt in each "
                f"process. Set ${ONNX_DIR_ENV} to a writable folder.",
                stacklevel=4,
            )
        return data

    def run(
        self,
        features: torch.Tensor,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, float]:
        """One prompt set: ``((1, 1, 4h, 4w)`` logits, predicted IoU)``; see ``decoder_graph``."""
        tokens = int(cast(Any, self.mask_decoder).num_mask_tokens) + 1 + len(labels)
        signature = Signature(mask_input is not None, tokens <= ABSORB_MAX_TOKENS)
        feeds = {
            "image_embeddings": _float_array(features),
            "point_coords": np.ascontiguousarray(coords, np.float32).reshape(-1, 2),
            "point_labels": np.ascontiguousarray(labels, np.int64).reshape(-1),
            "multimask": np.array(bool(multimask)),
        }
        if mask_input is not None:
            feeds["mask_input"] = _float_array(mask_input)
        low_res, score = self.session(signature).run(None, feeds)
        return torch.from_numpy(low_res), float(score[0])


def _float_array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), np.float32)


# --- the backend option -----------------------------------------------------------------------


class FastDecoderSegmenter(SamFamilySegmenter):
    """A ``SamFamilySegmenter`` whose decoder can run through ONNX Runtime.

    A backend calls :meth:`use_decoder` with its ``decoder`` option after
    ``SamFamilySegmenter.__init__``. With ``"onnx"``, ``predict`` does what
    ``SamFamilySegmenter.predict`` does (its ``_decoder_inputs``: the same checks, prompt frames,
    mask input and candidate rule; then ``upscale``) with :class:`OnnxDecoder` in place of the
    two modules, and ``predict_batch`` calls it once per request (on a CPU, batching the decoder
    is slower per item).
    """

    fast_decoder: OnnxDecoder | None = None

    @property
    def decoder(self) -> str:
        """``"onnx"`` or ``"eager"``."""
        return "eager" if self.fast_decoder is None else "onnx"

    def use_decoder(self, decoder: str) -> None:
        """Run the decoder as ``decoder`` says: ``"eager"`` (PyTorch) or ``"onnx"``."""
        if decoder not in DECODERS:
            raise ValueError(
                f"{self.name}: option decoder must be one of {list(DECODERS)}; got {decoder!r}"
            )
        if decoder == "eager":
            self.fast_decoder = None
            return
        if self.device.type != "cpu":
            raise ValueError(
                f"{self.name}: decoder='onnx' runs on the CPU (ONNX Runtime's CPU provider); "
                f"got device={str(self.device)!r}. Use device='cpu' or decoder='eager'."
            )
        self.fast_decoder = OnnxDecoder(self.prompt_encoder, self.mask_decoder, self.model_id)

    @torch.inference_mode()
    def predict(
        self,
        embedding: Embedding,
        prompts: Prompts,
        previous_logits: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        fast = self.fast_decoder
        if fast is None:
            return super().predict(embedding, prompts, previous_logits, multimask)
        # SamFamilySegmenter's checks, prompt frames, mask input and candidate rule:
        request = PredictRequest(embedding, prompts, previous_logits, multimask)
        inputs = self._decoder_inputs(request)
        coords, labels = sparse_prompts(inputs.points, inputs.boxes)
        features = embedding.features
        low_res, score = fast.run(features, coords, labels, inputs.masks, inputs.multimask)
        mask = self.upscale(low_res, embedding.image_size) > 0
        return Prediction(low_res, mask[0, 0].numpy(), score)

    def predict_batch(self, requests: Sequence[PredictRequest]) -> list[Prediction]:
        if self.fast_decoder is None:
            return super().predict_batch(requests)
        return Segmenter.predict_batch(self, requests)  # one predict per request


# --- the benchmark ----------------------------------------------------------------------------


def bench(
    repeats: int = 20,
    backend: str = "litemedsam_clicks",
    warmup: int = 3,
    cache: EmbeddingCache | None = None,
) -> dict[str, float]:
    """Eager against ONNX ms for a box step and a click step, timed round-robin.

    On the bundled MR demo sample, as ``medseg_bench.throughput`` times backends: the box
    alone, then a click at the target's centroid with the box and the box's logits. Each
    round calls eager box, fast box, eager click, fast click, so load drift hits all alike;
    the figures are medians. Also returns the largest logit difference between the two paths.
    ``cache``: the embedding cache to encode into (a new one by default).
    """
    from ..data import demo_dataset
    from .base import make_segmenter

    sample = next(s for s in demo_dataset() if s.modality == "MR")
    rows, cols = sample.mask.nonzero()
    box = Prompts().with_box(
        np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    )
    click = box.with_point(float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, True)
    cache = cache if cache is not None else EmbeddingCache()
    eager = cast(SamFamilySegmenter, make_segmenter(backend, cache=cache))
    fast = cast(SamFamilySegmenter, make_segmenter(backend, cache=eager.cache, decoder="onnx"))
    embedding = eager.encode(sample.image)
    logits = eager.predict(embedding, box).logits
    if not eager.supports("point"):
        click = box
    calls: dict[str, Callable[[], Prediction]] = {
        "eager_box": lambda: eager.predict(embedding, box),
        "onnx_box": lambda: fast.predict(embedding, box),
        "eager_click": lambda: eager.predict(embedding, click, logits),
        "onnx_click": lambda: fast.predict(embedding, click, logits),
    }
    largest = 0.0
    for step in ("box", "click"):
        a, b = calls[f"eager_{step}"](), calls[f"onnx_{step}"]()
        largest = max(largest, float((a.logits - b.logits).abs().max()))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    result = {f"{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}
    for step in ("box", "click"):
        result[f"{step}_speedup"] = result[f"eager_{step}_ms"] / result[f"onnx_{step}_ms"]
    result["max_logit_diff"] = largest
    result["threads"] = float(torch.get_num_threads())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="The fast decoder path: time it against eager PyTorch (--bench)."
    )
    parser.add_argument("--bench", action="store_true", help="time eager against ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=20, help="round-robin rounds (20)")
    parser.add_argument("--backend", default="litemedsam_clicks")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    r = bench(args.repeats, args.backend)
    print(f"{args.backend}, {int(r['threads'])} threads, median of {args.repeats} rounds:")
    print("| step | eager ms | onnx ms | eager/onnx |")
    print("|---|---|---|---|")
    for step in ("box", "click"):
        eager_ms, fast_ms = r[f"eager_{step}_ms"], r[f"onnx_{step}_ms"]
        print(f"| {step} | {eager_ms:.1f} | {fast_ms:.1f} | {r[f'{step}_speedup']:.2f}x |")
    print(f"largest logit difference: {r['max_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
