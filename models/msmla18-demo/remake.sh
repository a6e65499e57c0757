#!/usr/bin/env bash
# Remake the shipped demo model from scratch (about 15 minutes on 2 CPU cores). Run from any folder:
#   bash /path/to/lczmap/models/msmla18-demo/remake.sh [WORKDIR]
# Training cities: demo seeds 2-5 (6 km, three Sentinel-2 scenes each, staged as their median composite). Test: unseen seeds 6 and 8, (a) their WUDAPT-style reference polygons
# (unseen_ref.h5) and (b) every cell of their truth maps (unseen_all.h5), made by make_test_sets.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-demo-train}"
mkdir -p "$work" && cd "$work"
for seed in 2 3 4 5 6 8; do lczmap -q demo-data "city$seed" --seed "$seed" --size-km 6 --scenes 3; done
python "$here/make_test_sets.py" city6 city8
lczmap train --city city2/city.yaml --city city3/city.yaml --city city4/city.yaml --city city5/city.yaml \
  --network msmla18 --lr-decay 0.5 --lr-step 6 --epochs 30 --seed 0 --name msmla18-demo \
  --test unseen_ref.h5 --test unseen_all.h5 \
  --notes "Trained on synthetic cities written by lczmap demo-data (seeds 2-5, 6 km each, three Sentinel-2 scenes each, staged as their per-pixel median composite) and tested on two unseen ones (seeds 6 and 8): unseen_ref = their reference polygons, unseen_all = every cell of their truth maps. It is for trying the pipeline offline, not for mapping real cities: it has never seen a real Sentinel-2 scene and its accuracy on one is unknown. Remake it with models/msmla18-demo/remake.sh." \
  --out msmla18-demo
