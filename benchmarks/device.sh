#!/usr/bin/env bash
# The GPU machine's figures for README "GPU" and "Regions and clusters", in one device session of two `run` calls
# (the machine is offline and has no GDAL or TensorFlow; see ../shared/gpu/README.md).
#
#   here, once:  bash ../shared/gpu/fetch_wheels.sh && bash benchmarks/device.sh wheels
#   run call 1:  bash benchmarks/device.sh install          carry .whl-a .whl-c   (about 1 minute)
#   run call 2:  bash benchmarks/device.sh measure          carry .whl-b          (under 10 minutes)
#   run call 3 (optional, if device time is left):  bash benchmarks/device.sh scaling
#
# Every result lands in $OUT as soon as it is made (a JSON file per benchmark, a log per step), so a step that
# runs out of time still returns the ones before it. Sizes: DEVICE_CITY_KMS (default "8 16"); for a dry run on
# any machine: OUT=/tmp/out DEVICE_CITY_KMS=3 SITE=/tmp/site bash benchmarks/device.sh measure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/lczmap-device-out}
CITY_KMS=${DEVICE_CITY_KMS:-8 16}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD" KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_PREALLOCATE=false \
  PYTHONUNBUFFERED=1 LCZMAP_CACHE=${LCZMAP_CACHE:-/tmp/lczmap-cache} TF_CPP_MIN_LOG_LEVEL=2

# Small pure-Python (or tiny) dependencies the machine may lack; only the missing ones are installed (module=wheel).
EXTRA="click=click yaml=PyYAML attr=attrs certifi=certifi toolz=toolz cloudpickle=cloudpickle psutil=psutil
msgpack=msgpack sortedcontainers=sortedcontainers tqdm=tqdm rich=rich markdown_it=markdown-it-py mdurl=mdurl
pygments=pygments absl=absl-py typing_extensions=typing-extensions jinja2=jinja2 markupsafe=MarkupSafe
fsspec=fsspec packaging=packaging urllib3=urllib3 osmium=osmium"

install() {  # folder of wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$@" 2>&1 | grep -v "already exists" || true
}

step() {  # name, timeout seconds, command...: run, log to $OUT/<name>.log, never stop the script
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
}

# the CLI without a console script (Dask's worker processes re-import __main__, hence the guard)
LCZMAP=("$PY" -c 'import sys
from lczmap.cli import main
if __name__ == "__main__":
    sys.argv[0] = "lczmap"; main()')

case "${1:-}" in
wheels)  # here: download the EXTRA wheels for the machine's Python 3.12 into .whl-c (git-ignored)
  grep -qx '/.whl-c/' .git/info/exclude 2>/dev/null || echo '/.whl-c/' >> .git/info/exclude
  mkdir -p .whl-c
  wheels=()
  for pair in $EXTRA; do wheels+=("${pair#*=}"); done
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl-c "${wheels[@]}"
  du -sh .whl-c ;;
install)  # call 1: .whl-a, then what of .whl-c the machine lacks
  install .whl-a/*.whl
  shopt -s nocaseglob
  for pair in $EXTRA; do
    module=${pair%%=*} wheel=${pair#*=}
    "$PY" -c "import $module" 2>/dev/null && continue
    for file in .whl-c/"${wheel//-/_}"-*.whl; do
      [ -e "$file" ] && install "$file" && echo "installed ${file#.whl-c/}"
    done
  done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  "$PY" -c "import jax; print(jax.devices())" >> "$OUT/gpu.txt" 2>&1
  cat "$OUT/gpu.txt" ;;
measure)  # call 2: the benchmarks of README "GPU", GPU then the same machine's CPU cores
  install .whl-b/*.whl
  for km in $CITY_KMS; do  # the demo cities, generated in parallel (one core each)
    "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import predict; predict.demo_city($km, 1)" \
      >"$OUT/generate-$km.log" 2>&1 &
  done
  wait
  for km in $CITY_KMS; do
    step "gpu-${km}km" 150 "$PY" benchmarks/predict.py --city-km "$km" --batch-size auto --seconds 4 --json "$OUT/gpu-${km}km.json"
  done
  big=${CITY_KMS##* }
  step "gpu-${big}km-bf16" 120 "$PY" benchmarks/predict.py --city-km "$big" --batch-size auto --precision bfloat16 \
    --seconds 4 --json "$OUT/gpu-${big}km-bf16.json"
  # the command a user types, cold process (imports, compilation), float32 and bfloat16 maps kept for agreement
  city="$LCZMAP_CACHE/bench/city-${big}km/city.yaml"
  mkdir -p "$OUT/map-f32" "$OUT/map-bf16"
  step "cli-${big}km" 120 "${LCZMAP[@]}" -q predict --config "$city" --out "$OUT/map-f32/lcz.tif" --batch-size auto
  step "cli-${big}km-bf16" 120 "${LCZMAP[@]}" -q predict --config "$city" --out "$OUT/map-bf16/lcz.tif" --batch-size auto \
    --precision bfloat16
  step agreement 60 "$PY" -c "import rasterio, json
a, b = (rasterio.open('$OUT/map-' + p + '/lcz.tif').read(1) for p in ('f32', 'bf16'))
m = (a > 0) | (b > 0)
print(json.dumps({'cells': int(m.sum()), 'agreement': float((a[m] == b[m]).mean())}))"
  for km in $CITY_KMS; do  # the same machine's CPU cores alone
    JAX_PLATFORMS=cpu step "cpu-${km}km" 200 "$PY" benchmarks/predict.py --city-km "$km" --batch-size auto --seconds 4 \
      --json "$OUT/cpu-${km}km.json"
  done ;;
scaling)  # call 3: regions on 1..16 single-threaded CPU worker processes (README "Regions and clusters")
  install .whl-b/*.whl 2>/dev/null
  JAX_PLATFORMS=cpu step region-scaling 560 "$PY" benchmarks/region.py --scaling-only --workers "${DEVICE_WORKERS:-1,2,4,8,16}" \
    --scaling-km "${DEVICE_REGION_KM:-32}" --work /tmp/region-bench --json "$OUT/region-scaling.json" ;;
*)
  sed -n '2,13p' "$0"; exit 2 ;;
esac
