#!/usr/bin/env bash
# Build .verl-env/: verl 0.9.1 (and the transformers 5.10 it pins) as an overlay on the main venv.
#
# verl 0.9.1 pins transformers>=5.5.3,<5.11 while the main venv has 5.23, so verl lives in a
# folder of its own, installed with --no-deps: verl, transformers 5.10 with the huggingface-hub,
# tokenizers and httpx it needs, Ray's core (verl imports ray at `import verl`) and the few small
# modules verl's tool and agent-loop imports reach. torch, numpy, pydantic, omegaconf, hydra,
# tensordict, datasets, pandas, pyarrow, PIL... come from the main venv: nothing is duplicated,
# and no vllm / sglang / flash-attn (a real GPU run installs those; see
# agents/training/verl/run_verl_grpo.sh).
#
# Use it by putting it first on the path of the main venv's python:
#   bash scripts/verl_env.sh                  # about 2 min on 2 cores, 391 MB (Ray: 300 MB)
#   . .venv/bin/activate
#   PYTHONPATH=$PWD/.verl-env python -m pytest tests/training/test_verl_adapter.py -q
#
# Env: PYTHON (default .venv/bin/python), VERL_ENV (default .verl-env next to this folder).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TARGET=${VERL_ENV:-$ROOT/.verl-env}

# The overlay: exact versions, so the result does not drift.
OVERLAY=(
    "verl==0.9.1"
    "transformers==5.10.4"
    "huggingface-hub==1.33.0"   # transformers 5.10: huggingface-hub<2.0 (the main venv has 2.x)
    "tokenizers==0.22.2"        # transformers 5.10: tokenizers<=0.23.0
    "httpx==0.28.1" "httpcore==1.0.9" "certifi"
    "ray==2.60.0"               # `import verl` imports ray; its core dependencies follow
    "jsonschema==4.26.0" "jsonschema-specifications" "referencing" "rpds-py" "attrs"
    "msgpack" "protobuf" "requests" "charset-normalizer" "urllib3"
    "codetiming" "cachetools" "qwen-vl-utils==0.0.14"   # verl's agent-loop imports
)
# What verl's imports take from the main venv (import names); the build stops if one is missing.
# All of them come with `pip install -e ".[dev]"`: tensordict is in the dev extra, and orjson
# (which verl.utils.tracking imports without declaring it) comes with tensordict 0.14.
FROM_MAIN=(torch numpy PIL pydantic omegaconf hydra tensordict orjson datasets pandas pyarrow
    accelerate fastapi uvicorn regex safetensors packaging yaml tqdm dill click filelock)

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
# The verl wheel also ships top-level `tests` and `scripts` packages, which would shadow this
# repository's folders of the same names; `bin/` holds console scripts bound to the overlay.
rm -rf "$TARGET/tests" "$TARGET/scripts" "$TARGET/bin"

PYTHONPATH="$TARGET" "$PY" - <<'EOF'
import transformers, verl
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop  # noqa: F401
from verl.tools.base_tool import BaseTool  # noqa: F401
assert verl.__version__ == "0.9.1", verl.__version__
assert transformers.__version__.startswith("5.10."), transformers.__version__
print(f"verl {verl.__version__}, transformers {transformers.__version__}: imports ok")
EOF
echo "built $TARGET ($(du -sh "$TARGET" | cut -f1)) in $(( $(date +%s) - start )) s"
echo "use: PYTHONPATH=$TARGET $PY ..."
