"""SAM's prompt encoder + mask decoder rewritten on token matrices, and exported to ONNX.

:class:`RewrittenDecoder` is an ``nn.Module`` built from the two modules' weights that computes
what ``EagerDecoder.decode`` computes, rearranged for one prompt set on one image;
:func:`decoder_graph` exports it with ``torch.onnx.export`` (the dynamo exporter, which needs
``onnxscript``), the number of prompt points a dynamic axis. ``onnx_decoder.OnnxDecoder`` runs
the graph with ONNX Runtime and ``onnx_cache`` keeps it on disk.

## What the rewrite changes
- Points and box corners are one point list (labels -1 pad, 0/1 clicks, 2/3 box corners), as in
  SAM's own ONNX export, so a box, clicks or both share a graph (:func:`sparse_prompts`).
- The image positional encoding (``get_dense_pe``) and the no-mask embedding are constants.
- Everything is a 2-D token matrix (image ``(h*w, C)``, prompts ``(T, C)``): linear layers are
  single ``addmm`` calls (ONNX ``Gemm``), and SAM's two 2×2 stride-2 transposed convolutions
  (and the mask input's two 2×2 stride-2 convolutions) are matrix products on token rows,
  with one small reorder of the final ``256×256`` logits instead of transposes of 32-channel
  images.
- The cross attentions never project the ``h*w`` image tokens: in token→image attention the
  key and value projections move to the query side (``q·(W_k x + b_k) = (W_kᵀq)·x + q·b_k``,
  and ``Σ p_i (W_v x_i + b_v) = W_v Σ p_i x_i + b_v`` since the weights sum to 1); in
  image→token attention the query projection moves to the key side and the output projection
  to the value side. That saves about 40 % of the decoder's arithmetic for a box and a few
  clicks, but its cost grows with the number of tokens ``T`` (5 output tokens + clicks + 2 box
  corners or a pad point): above :data:`ABSORB_MAX_TOKENS` a second graph with SAM's own
  attention order is used (:class:`Signature`).
- Candidate selection happens in the graph (``multimask`` is an input): the output is the kept
  mask's ``(1, 1, 256, 256)`` logits and its predicted IoU.

## Exported, not hand-built
Until this module, the same arithmetic was written node by node with ``onnx.helper`` (the
824-line ``fast_decoder.py`` of commit 240c024, with its cache, runtime and bench). Both were
timed in one process, round-robin over the same inputs, on ``litemedsam_clicks`` with the
bundled MR demo sample (a box; a click + the box with the box's logits as mask input), with
ONNX Runtime's basic optimisations, alongside eager PyTorch and ``torch.onnx.export`` of SAM's
stock ``PromptEncoder`` + ``MaskDecoder``. Median ms per decode of 60 rounds, on 2 cores of a
Xeon shared with other jobs (load average 5-7), torch 2.14.1, onnxruntime 1.32.0; every mask
of every path equal to eager's (0 pixels differ, logits within 5e-5):

| threads | prompt | eager PyTorch | hand-built graph | this export | stock modules' export |
|---|---|---|---|---|---|
| 1 | box | 227.3 | 56.0 | 58.1 | 102.7 |
| 1 | click + box + mask | 226.4 | 60.5 | 61.5 | 96.3 |
| 2 | box | 1660.0 | 83.7 | 79.2 | 106.8 |
| 2 | click + box + mask | 1991.1 | 92.5 | 76.1 | 129.0 |

The hand-built graph is not measurably faster (at 1 thread 2-4 % within interquartile ranges
of 15-20 ms; at 2 threads the export was faster), so only the export is kept. An explicit
transpose of the image tokens in the token→image scores had cost the export 5-8 % at 1 thread;
``F.linear`` keeps it inside the ``Gemm``. The stock modules' export is 1.6-1.8× slower than
the rewrite at 1 thread: the rewrite, not ONNX Runtime alone, is what buys the speed. Eager's
2-thread figures show what a loaded machine does to PyTorch's thread pool (about 60 ms on an
idle one); ONNX Runtime's non-spinning threads suffer far less.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    import onnx

GRAPH_VERSION = 3
"""Bumped whenever the graph changes (part of the cache key): 1 hand-built, 2-3 exported."""

OPSET = 20  # the first with ONNX's Gelu
ABSORB_MAX_TOKENS = 17
"""Decoder tokens (5 output tokens + prompt points + box corners or pad) up to which the
absorbed cross attention is used; measured here: equal cost at 17 tokens, slower above (10
clicks and a box, the env's most at ``max_turns=10``, stay absorbed)."""

INPUTS = ("image_embeddings", "point_coords", "point_labels", "multimask", "mask_input")
OUTPUTS = ("low_res_masks", "score")


class Signature(NamedTuple):
    """What a graph is built for: a mask input or not, absorbed cross attention or not."""

    mask_input: bool
    absorbed: bool

    @property
    def tag(self) -> str:
        return ("mask" if self.mask_input else "nomask") + (
            "-absorbed" if self.absorbed else "-plain"
        )

    @classmethod
    def of(cls, mask_decoder: nn.Module, points: int, mask_input: bool) -> Signature:
        """The signature for ``points`` prompt points (clicks, box corners, pad)."""
        tokens = int(cast(Any, mask_decoder).num_mask_tokens) + 1 + points
        return cls(mask_input, tokens <= ABSORB_MAX_TOKENS)


def _weight(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy, detached: the module keeps its own weights (and training the
    segmenter's modules later does not change a graph already built)."""
    return tensor.detach().to("cpu", torch.float32).clone().contiguous()


class _Linear(nn.Module):
    """``nn.Linear`` on a 2-D input as one ``addmm`` (ONNX ``Gemm`` with the bias)."""

    weight_t: torch.Tensor
    bias: torch.Tensor

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.register_buffer("weight_t", _weight(layer.weight.t()))
        self.register_buffer("bias", _weight(layer.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)


class _Norm(nn.Module):
    """``nn.LayerNorm``, or SAM's ``LayerNorm2d`` on channels-last rows (the same sums)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, norm: Any) -> None:
        super().__init__()
        self.register_buffer("weight", _weight(norm.weight))
        self.register_buffer("bias", _weight(norm.bias))
        self.eps = float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, tuple(self.weight.shape), self.weight, self.bias, self.eps)


class _MLP(nn.Module):
    """SAM's ``MLP``: linear layers with ReLU between them."""

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Linear(layer) for layer in module.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


class _Attention(nn.Module):
    """SAM's ``Attention`` on 2-D token matrices, in its own order."""

    def __init__(self, att: Any) -> None:
        super().__init__()
        self.heads = int(att.num_heads)
        self.scale = 1 / math.sqrt(int(att.internal_dim) // self.heads)
        self.q, self.k = _Linear(att.q_proj), _Linear(att.k_proj)
        self.v, self.out = _Linear(att.v_proj), _Linear(att.out_proj)

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        heads = self.heads
        q = self.q(q_in).unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, Nq, d)
        kt = self.k(k_in).unflatten(-1, (heads, -1)).permute(1, 2, 0)  # (H, d, Nk)
        v = self.v(v_in).unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, Nk, d)
        weights = torch.softmax((q @ kt) * self.scale, dim=-1)
        return self.out((weights @ v).transpose(0, 1).flatten(1))


class _TokenToImage(nn.Module):
    """Tokens attend to the image without projecting its ``L`` tokens.

    ``q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k``: the key projection moves to the query side, so
    the scores are one ``(H*T, C) × (C, L)`` product; ``Σ p_i (W_v x_i + b_v) = W_v (Σ p_i x_i)
    + b_v`` (softmax weights sum to 1): the value projection follows the weighted sum.
    """

    wk: torch.Tensor
    bk: torch.Tensor
    wv: torch.Tensor
    bv: torch.Tensor

    def __init__(self, att: Any) -> None:
        super().__init__()
        heads, internal, c = int(att.num_heads), int(att.internal_dim), int(att.embedding_dim)
        d = internal // heads
        self.heads, self.channels, self.internal = heads, c, internal
        self.scale = 1 / math.sqrt(d)
        self.q, self.out = _Linear(att.q_proj), _Linear(att.out_proj)
        self.register_buffer("wk", _weight(att.k_proj.weight.reshape(heads, d, c)))
        self.register_buffer("bk", _weight(att.k_proj.bias.reshape(heads, d, 1)))
        wv = att.v_proj.weight.reshape(heads, d, c).transpose(1, 2)
        self.register_buffer("wv", _weight(wv))
        self.register_buffer("bv", _weight(att.v_proj.bias.reshape(heads, 1, d)))

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        q = self.q(q_in).unflatten(-1, (self.heads, -1)).transpose(0, 1) * self.scale  # (H,T,d)
        qk = (q @ self.wk).reshape(-1, self.channels)  # (H*T, C)
        qb = (q @ self.bk).reshape(-1, 1)  # (H*T, 1)
        # F.linear multiplies by the image tokens' transpose inside one Gemm (transB): an
        # explicit transpose would copy the (L, C) matrix at every layer.
        scores = F.linear(qk, k_in) + qb  # (H*T, L)
        mixed = torch.softmax(scores, dim=-1) @ v_in  # (H*T, C)
        out = mixed.reshape(self.heads, -1, self.channels) @ self.wv + self.bv  # (H, T, d)
        return self.out(out.transpose(0, 1).reshape(-1, self.internal))


class _ImageToToken(nn.Module):
    """The image attends to the tokens without projecting its ``L`` tokens.

    The query projection moves to the key side (scores: one ``(L, C) × (C, H*T)`` product)
    and the output projection to the value side (``(L, H*T) × (H*T, C)``).
    """

    wq: torch.Tensor
    bq: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor

    def __init__(self, att: Any) -> None:
        super().__init__()
        heads, internal, c = int(att.num_heads), int(att.internal_dim), int(att.embedding_dim)
        d = internal // heads
        self.heads, self.channels = heads, c
        self.scale = 1 / math.sqrt(d)
        self.k, self.v = _Linear(att.k_proj), _Linear(att.v_proj)
        wq = att.q_proj.weight.reshape(heads, d, c).transpose(1, 2)
        self.register_buffer("wq", _weight(wq))
        self.register_buffer("bq", _weight(att.q_proj.bias.reshape(heads, 1, d)))
        wo = att.out_proj.weight.reshape(c, heads, d).permute(1, 2, 0)
        self.register_buffer("wo", _weight(wo))
        self.register_buffer("bo", _weight(att.out_proj.bias))

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        heads, c = self.heads, self.channels
        kt = self.k(k_in).unflatten(-1, (heads, -1)).permute(1, 2, 0)  # (H, d, T)
        v = self.v(v_in).unflatten(-1, (heads, -1)).transpose(0, 1)  # (H, T, d)
        qk = (self.wq @ kt).transpose(0, 1).reshape(c, -1)  # (C, H*T)
        qb = (self.bq @ kt).reshape(1, -1)  # (1, H*T)
        scores = torch.addmm(qb, q_in, qk, beta=self.scale, alpha=self.scale)  # (L, H*T)
        rows = scores.shape[0]
        weights = torch.softmax(scores.reshape(rows, heads, -1), dim=-1).reshape(rows, -1)
        vo = (v @ self.wo).reshape(-1, c)  # (H*T, C)
        return torch.addmm(self.bo, weights, vo)


class _TwoWayLayer(nn.Module):
    """One ``TwoWayAttentionBlock``: token self-attention, token→image, MLP, image→token."""

    def __init__(self, layer: Any, absorbed: bool) -> None:
        super().__init__()
        self.skip_first_pe = bool(layer.skip_first_layer_pe)
        self.self_attn = _Attention(layer.self_attn)
        to_image: type[nn.Module] = _TokenToImage if absorbed else _Attention
        to_tokens: type[nn.Module] = _ImageToToken if absorbed else _Attention
        self.token_to_image = to_image(layer.cross_attn_token_to_image)
        self.image_to_token = to_tokens(layer.cross_attn_image_to_token)
        self.norm1, self.norm2 = _Norm(layer.norm1), _Norm(layer.norm2)
        self.norm3, self.norm4 = _Norm(layer.norm3), _Norm(layer.norm4)
        self.lin1, self.lin2 = _Linear(layer.mlp.lin1), _Linear(layer.mlp.lin2)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.token_to_image(q, k, keys))
        queries = self.norm3(queries + self.lin2(F.relu(self.lin1(queries))))
        q = queries + query_pe
        keys = self.norm4(keys + self.image_to_token(k, q, queries))
        return queries, keys


def check_layout(prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
    """Raise ``ValueError`` unless the modules are laid out as SAM's, as the rewrite assumes."""
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
            "the ONNX decoder needs SAM's prompt encoder and mask decoder layout: ReLU in the "
            "transformer's MLPs, exact GELU, 2x2 stride-2 up- and downscaling"
        )


class RewrittenDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder for one prompt set, rewritten (module docstring).

    ``forward(image_embeddings, point_coords, point_labels, multimask[, mask_input])``:

    - ``image_embeddings`` ``(1, C, h, w)`` float;
    - ``point_coords`` ``(N, 2)`` float, SAM's model-input pixel coordinates before its +0.5
      (``SamFamilySegmenter.prompt_tensors``); ``point_labels`` ``(N,)`` int64: 0/1 clicks,
      2/3 the box's corners, -1 SAM's pad point (:func:`sparse_prompts`);
    - ``multimask`` bool scalar; ``mask_input`` ``(1, 1, 4h, 4w)`` float, the previous logits
      (only with ``signature.mask_input``).

    Returns ``(low_res_masks (1, 1, 4h, 4w), score (1,))``: the kept mask's logits (the first
    mask, or with ``multimask`` the best-scored of the others, as SAM's ``multimask_output`` and
    argmax) and its predicted IoU. The weights are copied: the module does not follow later
    changes to the source modules.
    """

    input_size: torch.Tensor
    gaussian: torch.Tensor
    label_rows: torch.Tensor
    output_tokens: torch.Tensor
    key_pe: torch.Tensor
    mask_w1: torch.Tensor
    mask_b1: torch.Tensor
    mask_w2: torch.Tensor
    mask_b2: torch.Tensor
    mask_w3: torch.Tensor
    mask_b3: torch.Tensor
    no_mask: torch.Tensor
    up_w1: torch.Tensor
    up_b1: torch.Tensor
    up_w2: torch.Tensor
    up_b2: torch.Tensor
    eye: torch.Tensor

    def __init__(
        self, prompt_encoder: nn.Module, mask_decoder: nn.Module, signature: Signature
    ) -> None:
        super().__init__()
        check_layout(prompt_encoder, mask_decoder)
        enc, dec = cast(Any, prompt_encoder), cast(Any, mask_decoder)
        self.signature = signature
        c = int(enc.embed_dim)
        eh, ew = (int(v) for v in enc.image_embedding_size)
        ih, iw = (int(v) for v in enc.input_image_size)
        self.channels, self.eh, self.ew = c, eh, ew
        # Sparse prompts: PromptEncoder._embed_points / _embed_boxes, one point list.
        self.register_buffer("input_size", torch.tensor([iw, ih], dtype=torch.float32))
        self.register_buffer("gaussian", _weight(enc.pe_layer.positional_encoding_gaussian_matrix))
        rows = [enc.not_a_point_embed.weight, *(e.weight for e in enc.point_embeddings)]
        self.register_buffer("label_rows", _weight(torch.cat(rows)))  # label + 1 → row
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])
        self.register_buffer("output_tokens", _weight(tokens))
        key_pe = cast(Any, enc.get_dense_pe)().reshape(c, eh * ew).t()
        self.register_buffer("key_pe", _weight(key_pe))  # (L, C), a constant
        if signature.mask_input:
            conv1, norm1, _, conv2, norm2, _, conv3 = enc.mask_downscaling
            c1, c2 = int(conv1.out_channels), int(conv2.out_channels)
            self.mask_channels = c1
            w1 = conv1.weight[:, 0].reshape(c1, 4).t()  # (a b, out)
            self.register_buffer("mask_w1", _weight(w1))
            self.register_buffer("mask_b1", _weight(conv1.bias))
            self.mask_norm1, self.mask_norm2 = _Norm(norm1), _Norm(norm2)
            w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * c1, c2)  # (a' b' in, out)
            self.register_buffer("mask_w2", _weight(w2))
            self.register_buffer("mask_b2", _weight(conv2.bias))
            self.register_buffer("mask_w3", _weight(conv3.weight[:, :, 0, 0].t()))
            self.register_buffer("mask_b3", _weight(conv3.bias))
        else:
            self.register_buffer("no_mask", _weight(enc.no_mask_embed.weight[0]))
        # TwoWayTransformer.
        transformer = dec.transformer
        absorbed = signature.absorbed
        self.layers = nn.ModuleList(_TwoWayLayer(layer, absorbed) for layer in transformer.layers)
        to_image: type[nn.Module] = _TokenToImage if absorbed else _Attention
        self.final_attn = to_image(transformer.final_attn_token_to_image)
        self.final_norm = _Norm(transformer.norm_final_attn)
        # Heads and output upscaling: each 2×2 stride-2 transposed convolution is a product on
        # token rows; row (p, a, b) of the first (L*4, C/4), row (p, a, b, a2, b2) of the second.
        self.iou_head = _MLP(dec.iou_prediction_head)
        self.hypernetworks = nn.ModuleList(_MLP(m) for m in dec.output_hypernetworks_mlps)
        up1, norm, _, up2, _ = dec.output_upscaling
        o1, o2 = int(up1.out_channels), int(up2.out_channels)
        self.up_channels = (o1, o2)
        self.register_buffer("up_w1", _weight(up1.weight.permute(0, 2, 3, 1).reshape(c, 4 * o1)))
        self.register_buffer("up_b1", _weight(up1.bias.repeat(4)))
        self.up_norm = _Norm(norm)
        self.register_buffer("up_w2", _weight(up2.weight.permute(0, 2, 3, 1).reshape(o1, 4 * o2)))
        self.register_buffer("up_b2", _weight(up2.bias.repeat(4)))
        # The hypernetwork's dot product for the 4 sub-pixels of a row at once: a
        # block-diagonal (4*o2, 4) matrix made of this eye and the kept mask's weights.
        self.register_buffer("eye", torch.eye(4)[:, None, :].contiguous())

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        multimask: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c, eh, ew = self.channels, self.eh, self.ew
        n = eh * ew
        # Sparse prompts (N, C): the Fourier features of each point, zero for the pad point,
        # plus its label's embedding.
        xy = (point_coords + 0.5) / self.input_size * 2 - 1
        xy = (xy @ self.gaussian) * (2 * math.pi)
        fourier = torch.cat([torch.sin(xy), torch.cos(xy)], dim=-1)
        keep = (point_labels != -1).to(fourier.dtype).unsqueeze(-1)
        sparse = fourier * keep + self.label_rows.index_select(0, point_labels + 1)
        tokens = torch.cat([self.output_tokens, sparse], dim=0)  # (T, C)
        # Dense: image tokens (L, C) plus the mask embedding or the no-mask embedding.
        image = image_embeddings.reshape(c, n).t()
        if mask_input is not None:
            # Rows of 4×4 pixel blocks: pixel (4p + 2a' + a, 4q + 2b' + b) → row (p, q, a', b').
            blocks = mask_input.reshape(eh, 2, 2, ew, 2, 2).permute(0, 3, 1, 4, 2, 5)
            y = torch.addmm(self.mask_b1, blocks.reshape(4 * n, 4), self.mask_w1)
            y = F.gelu(self.mask_norm1(y))
            y = torch.addmm(self.mask_b2, y.reshape(n, 4 * self.mask_channels), self.mask_w2)
            y = F.gelu(self.mask_norm2(y))
            keys = image + torch.addmm(self.mask_b3, y, self.mask_w3)
        else:
            keys = image + self.no_mask
        queries, query_pe, key_pe = tokens, tokens, self.key_pe
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe, key_pe)
        q, k = queries + query_pe, keys + key_pe
        tokens_out = self.final_norm(queries + self.final_attn(q, k, keys))
        # The kept mask: token 1 (index 0 of the masks), or with multimask the best of 2-4.
        iou = self.iou_head(tokens_out[0:1]).reshape(-1)  # (n_masks,)
        first = torch.zeros((), dtype=torch.int64)
        best = torch.where(multimask, torch.argmax(iou[1:]) + 1, first).reshape(1)
        hyper = torch.cat(
            [mlp(tokens_out[1 + i : 2 + i]) for i, mlp in enumerate(self.hypernetworks)]
        )
        hyper_kept = hyper.index_select(0, best)  # (1, o2)
        o1, o2 = self.up_channels
        y = torch.addmm(self.up_b1, keys, self.up_w1).reshape(4 * n, o1)
        y = F.gelu(self.up_norm(y))
        y = F.gelu(torch.addmm(self.up_b2, y, self.up_w2))  # (4L, 4*o2)
        blocks = (self.eye * hyper_kept.reshape(1, o2, 1)).reshape(4 * o2, 4)
        logits = (y @ blocks).reshape(eh, ew, 2, 2, 2, 2)  # (p, q, a, b, a2, b2)
        logits = logits.permute(0, 2, 4, 1, 3, 5)  # row 4p+2a+a2, col 4q+2b+b2
        return logits.reshape(1, 1, 4 * eh, 4 * ew), iou.index_select(0, best)


def decoder_graph(
    prompt_encoder: nn.Module, mask_decoder: nn.Module, signature: Signature
) -> onnx.ModelProto:
    """:class:`RewrittenDecoder` for ``signature`` as an ONNX model (inputs :data:`INPUTS`,
    without ``mask_input`` unless ``signature.mask_input``; outputs :data:`OUTPUTS`).

    Exported with ``torch.onnx.export(dynamo=True)`` at opset :data:`OPSET`, with the number of
    prompt points ``N`` a dynamic axis (any ``N >= 0`` runs). Offline: nothing is downloaded.
    """
    module = RewrittenDecoder(prompt_encoder, mask_decoder, signature).eval()
    c, eh, ew = module.channels, module.eh, module.ew
    # An example with 3 points: torch.export specialises axes of size 0 or 1.
    args: list[torch.Tensor] = [
        torch.zeros(1, c, eh, ew),
        torch.zeros(3, 2),
        torch.tensor([1, 2, 3]),
        torch.tensor(False),
    ]
    if signature.mask_input:
        args.append(torch.zeros(1, 1, 4 * eh, 4 * ew))
    names = list(INPUTS[: len(args)])
    points = torch.export.Dim("points", min=0, max=4096)
    dynamic = {name: ({0: points} if name.startswith("point_") else None) for name in names}
    try:
        with warnings.catch_warnings():
            # The exporter's notes (a renamed axis, deprecations of its own internals) are not
            # the user's to act on.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(args),
                input_names=names,
                output_names=list(OUTPUTS),
                dynamic_shapes=dynamic,
                dynamo=True,
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        if program is None:  # only the legacy exporter returns None
            raise RuntimeError("torch.onnx.export returned no program")
    except Exception as err:  # the exporter raises many types; all mean the same to a user
        raise RuntimeError(
            f"building the ONNX decoder graph ({signature.tag}) failed with torch "
            f"{torch.__version__}: {type(err).__name__}: {err}. It needs torch.onnx's dynamo "
            "exporter and onnxscript; decoder='eager' runs without them."
        ) from err
    model = program.model_proto
    model.producer_name = "medseg_env"
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
