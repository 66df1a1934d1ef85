#!/bin/bash
cd /work/study_tree
for seed in 0 1 2; do for m in baseline mhe half_mhe; do
  if [ -f /work/main/runs/cifar10_small/seed$seed/repro/cifar10_small/$m/results.json ]; then continue; fi
  echo "$(date) start $m seed $seed" >> /work/main/runs/cifar10_small/driver.log
  nice -n 19 python -m mhe_jax.experiments run repro/cifar10_small/$m --set seed=$seed --set data_dir=/work/shared/data/cifar10_jpeg.npz --out /work/main/runs/cifar10_small/seed$seed --no-progress >> /work/main/runs/cifar10_small/seed${seed}_$m.out 2>&1
  echo "$(date) end $m seed $seed rc=$?" >> /work/main/runs/cifar10_small/driver.log
done; done
for seed in 0 1 2; do m=orthonormal
  if [ -f /work/main/runs/cifar10_small/seed$seed/repro/cifar10_small/$m/results.json ]; then continue; fi
  nice -n 19 python -m mhe_jax.experiments run repro/cifar10_small/$m --set seed=$seed --set data_dir=/work/shared/data/cifar10_jpeg.npz --out /work/main/runs/cifar10_small/seed$seed --no-progress >> /work/main/runs/cifar10_small/seed${seed}_$m.out 2>&1
done
