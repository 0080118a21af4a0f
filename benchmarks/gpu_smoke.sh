#!/usr/bin/env bash
# The built-in task's GPU paths, once, on a machine with an NVIDIA GPU (CI has none; run by hand):
#   1. the tiny Llama with bf16 compute under autocast and fp32 master weights;
#   2. chat SFT through TRL with LoRA on a bfloat16 base, stopped by Ctrl-C (SIGINT) mid-run and resumed by the same
#      command, to the end;
#   3. the tokenizer's scaling with processes on this machine's cores (benchmarks/tokenize_corpus.py).
# Usage: benchmarks/gpu_smoke.sh [OUT_DIR]   (from the repository root; PYTHON=python3 by default)
set -uo pipefail
repo=$PWD
out=${1:-${OUT:-/tmp/gpu-smoke}}
mkdir -p "$out"
work=$(mktemp -d)
py=${PYTHON:-python3}
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
hp() { "$py" -m hpcrun "$@"; }
step() { "$py" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(max([x['step'] for x in r] or [0]))" "$1" 2>/dev/null || echo 0; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, transformers, peft, trl, datasets; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| transformers', transformers.__version__, '| peft', peft.__version__, '| trl', trl.__version__, '| datasets', datasets.__version__)"
cd "$work" || exit 1

echo "== 1. tiny Llama, bf16 autocast on the GPU"
SECONDS=0
hp +experiment=tiny_llama cluster=local train.precision=bf16 run.dir=bf16 > "$out/bf16.log" 2>&1
echo "exit $? in ${SECONDS} s: $(grep -E 'eval loss|done:' "$out/bf16.log" | tr '\n' ' ')"

echo "== 2. chat SFT, LoRA on a bfloat16 base, Ctrl-C mid-run, then resumed"
"$py" -c "from pathlib import Path; from tests.builtin_data import make_builtin_work; make_builtin_work(Path('$work/w'))" > /dev/null 2>&1
sft=(+experiment=tiny_llama run.name=sft model.type=null "model.name_or_path=$work/w/gpt2" model.pretrained=true
     model.dtype=bfloat16 model.lora.r=8 "model.lora.target_modules=[c_attn,c_proj]" "data.corpus=$work/w/chat.jsonl"
     data.format=chat data.tokenizer=model data.seq_len=64 "train.max_steps=${SFT_STEPS:-2000}" train.log_every=10
     train.precision=bf16 train.batch_size=8 cluster=local run.dir=sft)
# python itself in the background (not the hp function, whose subshell would take the signal and ignore it)
"$py" -m hpcrun "${sft[@]}" > "$out/sft-1.log" 2>&1 &
pid=$!
for _ in $(seq 600); do [ "$(step sft/metrics.jsonl)" -ge "${STOP_AT:-300}" ] && break; sleep 0.2; done
kill -INT "$pid"; wait "$pid"; echo "first start: exit $?, stopped at step $(step sft/metrics.jsonl)"
hp "${sft[@]}" > "$out/sft-2.log" 2>&1
echo "second start: exit $?; $("$py" -c "import json; s=json.load(open('sft/state.json')); print(s['status'], [st.get('end') for st in s['starts']], 'resumed from', s['starts'][-1]['resumed_from'])")"
ls sft/final

[ -n "${SKIP_TOKENIZE:-}" ] && exit 0
echo "== 3. tokenizing 200 MB with 1, 4 and 16 processes"
cd "$repo" && "$py" benchmarks/tokenize_corpus.py --mb 200 --procs 1 4 16
cp benchmarks/results/tokenize_corpus.json "$out/tokenize_corpus.json"
