#!/usr/bin/env bash
# Every number in results/ comes from one of these commands (2-core CPU, no GPU).
# Usage: bash scripts/reproduce_cpu_results.sh [DATA]   (DATA: CIFAR-10 dir or .tar.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/cifar10-jpeg.tar.gz}"

# 1. Speed of every norm relative to BN (issue: benchmark), quiet machine.
python scripts/benchmark_norms.py --steps 30 --out results/benchmark_norms.md
python scripts/benchmark_norms.py --norms "BN,BKN analytic prior" --steps 40 --out results/benchmark_bn_vs_bkn.md

# 2. Dataflow throughput vs a training step.
python scripts/dataflow_speed.py --data "$DATA" --num-proc 1 --train-steps 30 | tee results/dataflow_speed.txt

# 3. Real-data check of the pipeline: BN, one group of 128, ResNet-20, 30-epoch short schedule.
python scripts/cifar_resnet.py --config configs/cifar10_resnet20_bn128_short.toml --data "$DATA"
python scripts/report_run.py --logdir train_log/real-cifar10-resnet20-bn128-short \
    --config configs/cifar10_resnet20_bn128_short.toml --out results/cifar10_resnet20_bn128_short \
    --note "Short CPU schedule (30 epochs), not the paper's recipe." \
    --paper "ResNet-20 + BN, batch 128: 91.25% (He et al. 2016, 164 epochs); KN paper, ResNet-32 + BN (bs=128): 91.2%"

# 4. Prior quality per layer, both hand-on modes, after 300 micro-batch training steps.
python scripts/prior_diagnostic.py --data "$DATA" --train-steps 300 --out results/prior_diagnostic.md

# 5. BN vs BKN at 2 samples per normalization, ResNet-20, 10 epochs (CPU analogue of Fig. 4).
for norm in bn bkn; do
  python scripts/cifar_resnet.py --config configs/cpu10_resnet20_${norm}_b2.toml --data "$DATA"
  python scripts/report_run.py --logdir train_log/cpu10-cifar10-resnet20-${norm}-b2 \
      --config configs/cpu10_resnet20_${norm}_b2.toml --out results/cpu10_resnet20_${norm}_b2 \
      --note "10-epoch CPU schedule, ResNet-20 (the paper: ResNet-32, ~400 epochs, GPU)." \
      --paper "Fig. 4 (ResNet-32, bs=2, ~400 epochs): BKN beats BN by 1.5 points; Table 8: BN (bs=2) 89.4%, KN (bs=2) 90.9%"
done
