#!/bin/bash
# Shared base checkpoints for parity (issue 11), residual RL (13), steering (14). Resumable: re-run continues.
# lift/push: 50 scripted demos at 32 px (seeds 0..49); BC 3000 steps b64; diffusion 4000 steps b32 (lift: continued
# to 10000 as diffusion10k, then distilled into the one-step student onestep10k); BC-GMM 3000 b64.
# stack (two stages): 200 demos (50 gave a BC base at 2 %); BC 3000 b64; diffusion10k trained 10000 b32 directly.
# push200 (the second steering task; 50 push demos gave bases at 4-20 %): 200 demos, diffusion10k 10000 b32, BC-GMM
# 3000 b64, the one-step student onestep10k (1500 steps from diffusion10k).
# stack64 (is resolution the stack base's limit?): 200 stack demos at 64 px, BC 3000 b64 (~20 min).
# stack64/bc_nas16: the same weights re-planning every 16 steps (a copied checkpoint, one spec value changed).
# stack64/diffusion: diffusion 8000 b32 on the stack64 demos (~25 min).
# About 4 h of CPU on 2 idle cores.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
R=${BASES_DIR:-runs/bases}
for folder in lift push stack push200; do
  task=${folder%200}; n=50; [ $task = stack ] || [ $folder = push200 ] && n=200
  [ -f $R/$folder/demos.zarr/.done ] || { rm -rf $R/$folder/demos.zarr; nice -n 5 .venv/bin/python -m robot_learning.cli sim demos --task $task --episodes $n --quality 1.0 --out $R/$folder/demos.zarr image_size=32 && touch $R/$folder/demos.zarr/.done; }
done
train() { # folder (task name, or push200) policy steps batch [out folder name, default the policy's]
  local d=$R/$1/${5:-$2}
  [ -f $d/policy.pt ] && grep -q "^$3$" $d/.steps 2>/dev/null && return
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=$2 task=${1%200} task.image_size=32 data.store=$R/$1/demos.zarr \
    train.steps=$3 train.batch_size=$4 out_dir=$d && echo $3 > $d/.steps
}
# two lanes, one per core
( train lift bc 3000 64; train push bc 3000 64; train lift bc_gmm 3000 64; train push diffusion 4000 32; train stack bc 3000 64; train push200 bc_gmm 3000 64 ) > $R/train_a.log 2>&1 &
( train lift diffusion 4000 32; train stack diffusion 10000 32 diffusion10k; train push200 diffusion 10000 32 diffusion10k ) > $R/train_b.log 2>&1 &
wait
# the lift diffusion base for parity: the 4000-step run above continued to 10000 steps (same demos, resumed)
if ! grep -q "^10000$" $R/lift/diffusion10k/.steps 2>/dev/null; then
  [ -d $R/lift/diffusion10k ] || { cp -r $R/lift/diffusion $R/lift/diffusion10k; rm -f $R/lift/diffusion10k/policy.pt; }
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=diffusion task=lift task.image_size=32 \
    data.store=$R/lift/demos.zarr train.steps=10000 train.batch_size=32 out_dir=$R/lift/diffusion10k \
    && echo 10000 > $R/lift/diffusion10k/.steps
fi
distill() { # folder (lift | push200): the one-step student, 1500 steps from the folder's diffusion10k DDIM-10 sampler
  local d=$R/$1/onestep10k
  grep -q "^1500$" $d/.steps 2>/dev/null && return
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=diffusion_onestep \
    policy.params.teacher=$R/$1/diffusion10k/policy.pt task=${1%200} task.image_size=32 data.store=$R/$1/demos.zarr \
    train.steps=1500 train.batch_size=64 out_dir=$d && echo 1500 > $d/.steps
}
distill lift     # the second lift steering base
distill push200  # the second push steering base
variant() { # source folder, new folder, checkpoint section, key, value: same weights, one setting changed
  [ -f $R/$2/policy.pt ] && return
  mkdir -p $R/$2
  .venv/bin/python -c "import torch, sys; c = torch.load(sys.argv[1], weights_only=True); \
c[sys.argv[3]][sys.argv[4]] = float(sys.argv[5]) if '.' in sys.argv[5] else int(sys.argv[5]); torch.save(c, sys.argv[2])" \
    $R/$1/policy.pt $R/$2/policy.pt $3 $4 $5
}
# lift BC-GMM sampled at temperature 0.3 (policy.params.sample_std_scale: sampling only, same weights) for steering
variant lift/bc_gmm lift/bc_gmm_t03 policy_config sample_std_scale 0.3
# the 64 px stack BC base (residual RL on stack): same recipe as stack/bc, cameras at 64 px
if ! grep -q "^3000$" $R/stack64/bc/.steps 2>/dev/null; then
  [ -f $R/stack64/demos.zarr/.done ] || { rm -rf $R/stack64/demos.zarr; nice -n 5 .venv/bin/python -m robot_learning.cli sim demos \
    --task stack --episodes 200 --quality 1.0 --out $R/stack64/demos.zarr image_size=64 && touch $R/stack64/demos.zarr/.done; }
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=bc task=stack task.image_size=64 data.store=$R/stack64/demos.zarr \
    train.steps=3000 train.batch_size=64 out_dir=$R/stack64/bc && echo 3000 > $R/stack64/bc/.steps
fi
# the same stack64 BC weights re-planning every 16 steps (spec n_action_steps 16: the whole predicted horizon
# open-loop; 11 % against 6 % every 8): the residual RL base on stack (runs/finetune_stack64)
variant stack64/bc stack64/bc_nas16 spec n_action_steps 16
# the 64 px stack diffusion base (residual RL on stack with the second base type): the stack64 demos, 8000 steps b32
# (~25 min), DDIM-10, re-planning every 8 (its spec)
if ! grep -q "^8000$" $R/stack64/diffusion/.steps 2>/dev/null; then
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=diffusion task=stack task.image_size=64 \
    data.store=$R/stack64/demos.zarr train.steps=8000 train.batch_size=32 out_dir=$R/stack64/diffusion && echo 8000 > $R/stack64/diffusion/.steps
fi
# the same diffusion weights re-planning every 16 steps (1/100 against 0/100 every 8: not the residual's base)
variant stack64/diffusion stack64/diffusion_nas16 spec n_action_steps 16
# longer-trained stack64 bases (is training length the stack bases' limit?): BC 6000 steps b64 (~30 min) and
# diffusion 16000 steps b32 (~55 min) on the same stack64 demos, one lane each, and their every-16 variants
if ! grep -q "^6000$" $R/stack64/bc6k/.steps 2>/dev/null || ! grep -q "^16000$" $R/stack64/diffusion16k/.steps 2>/dev/null; then
  ( grep -q "^6000$" $R/stack64/bc6k/.steps 2>/dev/null || { nice -n 5 .venv/bin/python -m robot_learning.cli train policy=bc task=stack \
      task.image_size=64 data.store=$R/stack64/demos.zarr train.steps=6000 train.batch_size=64 out_dir=$R/stack64/bc6k \
      && echo 6000 > $R/stack64/bc6k/.steps; } ) > $R/stack64_bc6k.log 2>&1 &
  ( grep -q "^16000$" $R/stack64/diffusion16k/.steps 2>/dev/null || { nice -n 5 .venv/bin/python -m robot_learning.cli train policy=diffusion \
      task=stack task.image_size=64 data.store=$R/stack64/demos.zarr train.steps=16000 train.batch_size=32 out_dir=$R/stack64/diffusion16k \
      && echo 16000 > $R/stack64/diffusion16k/.steps; } ) > $R/stack64_diffusion16k.log 2>&1 &
  wait
fi
variant stack64/bc6k stack64/bc6k_nas16 spec n_action_steps 16
# diffusion16k re-planning every 16: 14/100 (every 8: 6/100) -- the stack residual's diffusion base (finetune_stack64_rebuild2)
variant stack64/diffusion16k stack64/diffusion16k_nas16 spec n_action_steps 16
# BC trained 10000 steps b64 on the stack64 demos (~54 min on one thread): 6/100 every 8, 18/100 re-planning every 16
# (the 3000-step build: 11/100) -- the stack residual's BC base of runs/finetune_stack64_bc10k
if ! grep -q "^10000$" $R/stack64/bc10k/.steps 2>/dev/null; then
  nice -n 5 .venv/bin/python -m robot_learning.cli train policy=bc task=stack task.image_size=64 data.store=$R/stack64/demos.zarr \
    train.steps=10000 train.batch_size=64 out_dir=$R/stack64/bc10k && echo 10000 > $R/stack64/bc10k/.steps
fi
variant stack64/bc10k stack64/bc10k_nas16 spec n_action_steps 16
