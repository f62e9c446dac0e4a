#!/usr/bin/env bash
# GRPO on MedSeg-Text-v0 with verl 0.9.1: MedSAM-Agent's RL recipe (configs/medseg_grpo.yaml) on
# this project's env, tools (verl_tools) and agent loop (verl_agent_loop). A real GPU run.
#
# Needs, on the GPU node:
#   - a venv with verl 0.9.1 and a rollout engine, e.g. `pip install "verl[vllm]==0.9.1"` (it pins
#     torch 2.11, transformers 5.9, vllm 0.24; flash-attn as verl's docs say), and this project
#     installed into it (`pip install -e /path/to/repo`); the CPU overlay of scripts/verl_env.sh
#     has no rollout engine and cannot train;
#   - a local Qwen3-VL folder (MedSAM-Agent: Qwen3-VL-8B-Instruct): MODEL_PATH;
#   - the parquet rows (written here on first use): DATA_DIR.
#
#   MODEL_PATH=/models/Qwen3-VL-8B-Instruct NGPUS=8 bash agents/training/verl/run_verl_grpo.sh [overrides...]
#
# Extra arguments are Hydra overrides, e.g. trainer.total_epochs=1 data.train_batch_size=4.
# The env steps (the segmenter) run in verl's agent-loop workers, on their CPU.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:?set MODEL_PATH to a local Qwen3-VL model folder}
DATA_DIR=${DATA_DIR:-data/verl}
NGPUS=${NGPUS:-8}
NNODES=${NNODES:-1}
PROJECT_NAME=${PROJECT_NAME:-medseg_agent}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-medseg-grpo}
SAVE_DIR=${SAVE_DIR:-checkpoints}
PYTHON=${PYTHON:-python3}

# Absolute paths: Ray workers resolve relative ones against their own working directory.
CONFIG_DIR=$("$PYTHON" -c 'import medseg_agents.training.verl as m, os; print(os.path.join(os.path.dirname(m.__file__), "configs"))')
DATA_DIR=$(mkdir -p "$DATA_DIR" && cd "$DATA_DIR" && pwd)
if [ ! -f "$DATA_DIR/train.parquet" ]; then
    "$PYTHON" -m medseg_agents.training.verl.verl_data --out "$DATA_DIR"
fi
mkdir -p "$SAVE_DIR/logs"

PYTHONUNBUFFERED=1 "$PYTHON" -m verl.trainer.main_ppo \
    --config-path="$CONFIG_DIR" \
    --config-name=medseg_grpo \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    data.train_files="$DATA_DIR/train.parquet" \
    data.val_files="$DATA_DIR/val.parquet" \
    actor_rollout_ref.rollout.multi_turn.tool_config_path="$CONFIG_DIR/medseg_tools.yaml" \
    actor_rollout_ref.rollout.agent.agent_loop_config_path="$CONFIG_DIR/medseg_agent_loop.yaml" \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.nnodes="$NNODES" \
    trainer.project_name="$PROJECT_NAME" \
    trainer.experiment_name="$EXPERIMENT_NAME" \
    trainer.default_local_dir="$SAVE_DIR/$PROJECT_NAME/$EXPERIMENT_NAME" \
    "$@" 2>&1 | tee "$SAVE_DIR/logs/$EXPERIMENT_NAME.log"
