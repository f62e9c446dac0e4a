#!/usr/bin/env bash
# Build .lf-env/: LLaMA-Factory 0.9.5 (data loading only) as an overlay on the main venv.
#
# llamafactory 0.9.5 pins transformers<=5.6, datasets<=4.0, trl<=0.24 and a whole training
# stack (gradio, modelscope, torchaudio, ...), while the main venv has transformers 5.23,
# datasets 5.2 and trl 1.16. Its data pipeline (`llamafactory.data.get_dataset`, the templates
# and the multimodal plugins) runs on the main venv's transformers and datasets, so the overlay
# holds only, installed with --no-deps:
#   - llamafactory itself;
#   - peft 0.18.1 (`llamafactory.data.collator` imports it; the main venv has none);
#   - trl 0.24.0 (`llamafactory.model` imports AutoModelForCausalLMWithValueHead, which trl 1.x
#     removed; the overlay's trl shadows the main venv's only under this PYTHONPATH);
#   - torchaudio 2.11.0 (`llamafactory.data.mm_plugin` imports it at module level; 2.11 is the
#     newest the registry has, its libraries use torch's stable ABI (abi3) and import with the
#     main venv's torch 2.14; only the audio path would call it).
# torch, transformers, datasets, accelerate, tokenizers, PIL, numpy, pandas, ... come from the
# main venv. LLaMA-Factory's version check (run at `import llamafactory.hparams`) refuses these
# versions: set DISABLE_VERSION_CHECK=1 (tests/training/test_llamafactory_loader.py does).
#
# Use it by putting it first on the path of the main venv's python:
#   bash scripts/llamafactory_env.sh        # a few seconds, about 25 MB
#   . .venv/bin/activate
#   PYTHONPATH=$PWD/.lf-env python -m pytest tests/training/test_llamafactory_loader.py -q
#
# Env: PYTHON (default .venv/bin/python), LF_ENV (default .lf-env next to this folder).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TARGET=${LF_ENV:-$ROOT/.lf-env}

# The overlay: exact versions, so the result does not drift.
OVERLAY=(
    "llamafactory==0.9.5"
    "peft==0.18.1"        # llamafactory 0.9.5: peft>=0.18.0,<=0.18.1
    "trl==0.24.0"         # llamafactory 0.9.5: trl>=0.18.0,<=0.24.0
    "torchaudio==2.11.0"  # imported by llamafactory.data.mm_plugin
)
# What LLaMA-Factory's data loading takes from the main venv (import names).
FROM_MAIN=(torch transformers datasets accelerate tokenizers huggingface_hub safetensors PIL
    numpy pandas pyarrow yaml packaging omegaconf pydantic jinja2 tqdm)

start=$(date +%s)
missing=$("$PY" - "${FROM_MAIN[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "the main venv ($PY) lacks: $missing (pip install them there first)" >&2
    exit 1
fi

rm -rf "$TARGET"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --target "$TARGET" "${OVERLAY[@]}"
# `bin/` holds console scripts bound to the overlay (llamafactory-cli, trl, ...).
rm -rf "$TARGET/bin"

DISABLE_VERSION_CHECK=1 PYTHONPATH="$TARGET" "$PY" - <<'EOF'
import llamafactory, trl
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: F401
from llamafactory.hparams import get_train_args  # noqa: F401
from llamafactory.model import load_tokenizer  # noqa: F401
assert llamafactory.__version__ == "0.9.5", llamafactory.__version__
assert trl.__version__ == "0.24.0", trl.__version__
print(f"llamafactory {llamafactory.__version__}, trl {trl.__version__}: imports ok")
EOF
echo "built $TARGET ($(du -sh "$TARGET" | cut -f1)) in $(( $(date +%s) - start )) s"
echo "use: DISABLE_VERSION_CHECK=1 PYTHONPATH=$TARGET $PY ..."
