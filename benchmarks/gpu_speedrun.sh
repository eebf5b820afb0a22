#!/usr/bin/env bash
# The speedrun on a GPU machine, in under 8 minutes: the tiny preset end to end on CUDA, then the gpu
# preset's first 300 pretraining steps, with their tokens/s and MFU beside the planner's estimate.
# NEVER RUN YET: no GPU has been lent to this project's sessions so far. Run it whenever one is:
#   SCRATCHLM_DATA=../shared/data bash benchmarks/gpu_speedrun.sh /tmp/gpu-speedrun
set -euo pipefail
WORK=${1:-/tmp/gpu-speedrun}
rm -rf "$WORK" && mkdir -p "$WORK"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
start=$(date +%s)
scratchlm speedrun --preset tiny --out "$WORK/tiny" --set eval.device=cuda
echo "tiny preset on CUDA: $(( $(date +%s) - start )) s"
scratchlm speedrun --preset gpu --out "$WORK/gpu" --until pretrain \
  --set pretrain.budget.max_steps=300 --set pretrain.eval.every=0 --set pretrain.checkpoint.every=0
python - "$WORK/gpu/pretrain/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
late = rows[len(rows) // 2:]  # past compilation and warm-up
tps = sum(r["tokens_per_s"] for r in late) / len(late)
mfu = sum(r["mfu"] for r in late) / len(late)
print(f"gpu preset, steps {late[0]['step']}-{late[-1]['step']}: {tps:,.0f} tokens/s, MFU {mfu:.3f}")
PY
scratchlm plan --preset llama-30m --gpus 1xH100 --micro-batch 64 || true
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
echo "total: $(( $(date +%s) - start )) s"
