#!/bin/bash
# GPU pilot: the issue-9 ablation on both data sets, variants in parallel processes.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
python3 -c "import hf_unlearnable, torch, datasets, kornia; print('ok', torch.__version__, torch.cuda.is_available())" || exit 1
V=${VARIANTS:-paper,own,dropout,own+dropout,eot,dropout+eot,own+dropout+eot,dropout=0.75+eot,em,em+eot}
start=$(date +%s)
for d in icons synthetic; do
  timeout ${BUDGET:-300} python3 benchmarks/ablation_robust.py --dataset $d --jobs 10 --variants $V --output /tmp/abl_$d $EXTRA > $OUT/$d.log 2>&1 &
done
wait
echo "elapsed $(( $(date +%s) - start )) s"
for d in icons synthetic; do
  python3 benchmarks/ablation_robust.py --dataset $d --variants $V --output /tmp/abl_$d --stage table $EXTRA > /dev/null 2>&1
  cp /tmp/abl_$d/ablation.md $OUT/ablation_$d.md; cp /tmp/abl_$d/ablation.json $OUT/ablation_$d.json
  cat /tmp/abl_$d/ablation.md; grep -h "protected \|failed\|Error" $OUT/$d.log | head -30
done
