#!/usr/bin/env bash
# GPU checks for the core engine (run on a lent H100/H200 from the repo root; see README "GPU").
# Packages the GPU image lacks travel as wheels in .whl/ (installed to /tmp/site).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:.
else
    export PYTHONPATH=.
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q tests/test_engine_cuda.py tests/test_engine.py tests/test_verify.py -x 2>&1 | tail -3
CLI="python3 -m nightjar_rl.cli"
# roofline: verify cost by batch x tokens per row, 8B-shaped target, 1B-shaped draft step
$CLI profile --model random:llama-3-8b --draft random:llama-3.2-1b --dtype bfloat16 --device cuda \
    --batch-sizes 1,4,16,32,64,128 --tokens 1,2,4,8 --context 512 --repeats 5 --quiet \
    --out "$OUT/profile-llama3-8b-h100-bf16.json"
python3 -c "
import json,sys; p=json.load(open('$OUT/profile-llama3-8b-h100-bf16.json'))
print('verify ms (rows: batch, cols: tokens/row):')
for b,row in p['verify_ms'].items(): print(f'{b:>5}', ' '.join(f'{v:8.2f}' for v in row.values()))
print('draft ms per token:', p['draft_ms'])"
for spec in "none 0" "draft 3" "ngram 3"; do
    set -- $spec
    $CLI bench --model random:llama-3-8b --drafter $1 --draft random:llama-3.2-1b --dtype bfloat16 --device cuda \
        --k $2 --num-requests 64 --max-batch-size 16 --max-new-tokens 128 --max-seq-len 2048 --quiet \
        --out "$OUT/bench-$1-k$2.json" | grep -E "throughput|acceptance_rate|mean_accepted|tpot_p50|e2e_p50|overhead|verify_s|draft_s|catchup"
done
