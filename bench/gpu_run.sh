# On the GPU machine (the device tool's `run`, carry [".gpu"] made by bench/gpu_carry.sh):
#   bash bench/gpu_run.sh          the GPU check (bench/gpu_check.py), its JSON and log to $OUT
#   bash bench/gpu_run.sh smith    smith on shapes for 120 s, each output line stamped with the
#                                  seconds since its start: where the time goes
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
S=/tmp/site; mkdir -p $S/tunesmith
t0=$(date +%s)
tar xJf .gpu/ray.tar.xz -C $S
python3 -m pip install -q --no-index --no-deps --target $S .gpu/wheels/*.whl 2>&1 | tail -3
for d in orchestrator trainables search_spaces cluster; do ln -sfn "$PWD/$d" "$S/tunesmith/$d"; done
export PYTHONPATH=$S
echo "setup $(( $(date +%s) - t0 )) s; $(nproc) CPUs"
python3 -c "import sys, torch, torchvision, timm, ray, tunesmith.orchestrator.cli; print(sys.version.split()[0], torch.__version__, torchvision.__version__, timm.__version__, ray.__version__, torch.cuda.get_device_name(0))"
if [ "${1:-check}" = check ]; then
  timeout 400 python3 bench/gpu_check.py --out "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log"
  exit
fi
mkdir -p /tmp/sm
printf '{"dataset": {"name": "shapes"}, "results_dir": "/tmp/sm", "time_budget_s": 120, "resources": {"gpus": 0.25}}' > /tmp/sm/spec.yaml
python3 -c "import torch; from tunesmith.trainables import data; from tunesmith.trainables.config import DatasetConfig; data.load(DatasetConfig(name='shapes'), torch.device('cpu'))"
timeout 200 python3 -m tunesmith.orchestrator smith /tmp/sm/spec.yaml --name smith --num-cpus "$(nproc)" 2>&1 \
  | python3 -c "
import sys, time
t0 = time.time()
for line in sys.stdin:
    print(f'{time.time() - t0:6.1f} {line}', end='', flush=True)" | tee "$OUT/smith.log"
cp /tmp/sm/smith/smith.json "$OUT/" 2>/dev/null
