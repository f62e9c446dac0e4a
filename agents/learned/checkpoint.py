"""The learned agent's checkpoints: ``policy.safetensors`` (tensors) and ``policy.json`` (spec).

Nothing is unpickled: the weights are safetensors, the spec is JSON. A folder whose files are
missing, whose JSON is malformed, whose spec has a missing, unknown or bad field, or whose
tensors do not fit the spec's network raises ``CheckpointError`` naming the file and the field
or tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medseg_env.files import atomic_write

from .network import FORMAT, PolicySpec, PromptNet

WEIGHTS_FILE = "policy.safetensors"
SPEC_FILE = "policy.json"


class CheckpointError(ValueError):
    """A learned-agent checkpoint that cannot be loaded; the message names the file and field."""


def save_checkpoint(folder: str | Path, net: PromptNet, meta: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (and ``meta``, e.g. how it was trained) into ``folder``; returns it.

    Both files are written atomically, the weights first, so a folder never pairs new weights
    with an old spec that cannot describe them.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    doc = {"format": FORMAT, "spec": net.spec.to_dict(), "meta": meta or {}}
    atomic_write(folder / SPEC_FILE, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return folder


def read_spec(folder: str | Path) -> tuple[PolicySpec, dict[str, Any]]:
    """The spec and metadata of a checkpoint folder (``policy.json``)."""
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a learned-agent checkpoint has {SPEC_FILE})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object; got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: field 'format' is {doc.get('format')!r}; expected {FORMAT!r}"
        )
    raw = doc.get("spec")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: field 'spec' must be an object; got {raw!r}")
    known = set(PolicySpec.__dataclass_fields__)
    missing, unknown = sorted(known - set(raw)), sorted(set(raw) - known)
    if missing or unknown:
        raise CheckpointError(
            f"{path}: field 'spec' has missing {missing} and unknown {unknown} keys; "
            f"expected {sorted(known)}"
        )
    try:
        spec = PolicySpec(**raw)
    except ValueError as err:
        raise CheckpointError(f"{path}: field 'spec': {err}") from None
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: field 'meta' must be an object; got {meta!r}")
    return spec, meta


def load_checkpoint(folder: str | Path) -> tuple[PromptNet, dict[str, Any]]:
    """The network of a checkpoint folder (in eval mode) and its metadata.

    Raises:
        CheckpointError: a missing or malformed file, a bad spec field, or a tensor that is
            missing, unexpected or of the wrong shape for the spec's network.
    """
    folder = Path(folder)
    spec, meta = read_spec(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a learned-agent checkpoint has {WEIGHTS_FILE})")
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: not a safetensors file ({err})") from None
    net = PromptNet(spec)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not fit the spec in {SPEC_FILE}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}; the spec in "
                f"{SPEC_FILE} ({spec}) needs {tuple(expected[name].shape)}"
            )
    net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    net.eval()
    return net, meta
