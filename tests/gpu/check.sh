#!/usr/bin/env bash
# The GPU check (only on a machine with an NVIDIA GPU; under 5 minutes): install the `gpu`
# extra in a fresh virtual environment, run the YOLO service on each shared model once with
# the CUDA execution provider and once on the CPU, check that the detections agree within
# float tolerance, and print the p50 /predict latency of both.
#
#   bash tests/gpu/check.sh            # from the repository root
#
# Offline machines: set CNET_WHEELS to a directory of wheels (onnxruntime-gpu, nvidia-ml-py,
# their CUDA/cuDNN wheels and cnet's own dependencies); pip then installs from it alone.
# CNET_MODELS_DIR names the models (default: shared/models, else ../shared/models).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
START=$(date +%s)
VENV=${CNET_GPU_VENV:-/tmp/cnet-gpu-venv}
MODELS=${CNET_MODELS_DIR:-$([ -d shared/models ] && echo shared/models || echo ../shared/models)}
N=${CNET_GPU_REQUESTS:-30}

nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv,noheader
GPU=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -n1)

pip_args=()
if [ -n "${CNET_WHEELS:-}" ]; then pip_args=(--no-index --find-links "$CNET_WHEELS"); fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "${pip_args[@]}" -e "$REPO[gpu]"
# onnxruntime-gpu and the CPU-only onnxruntime install the same `onnxruntime` package: keep
# only the GPU build (and its CUDA 12 / cuDNN 9 wheels where pip can reach them).
"$VENV/bin/pip" uninstall -q -y onnxruntime || true
"$VENV/bin/pip" install -q "${pip_args[@]}" --force-reinstall --no-deps "onnxruntime-gpu>=1.17"
"$VENV/bin/pip" install -q "${pip_args[@]}" "onnxruntime-gpu[cuda,cudnn]>=1.17" \
    || echo "note: the CUDA/cuDNN wheels were not installed; the system libraries must do"
"$VENV/bin/python" - <<'EOF'
import onnxruntime as ort, pynvml
pynvml.nvmlInit()
print("onnxruntime", ort.__version__, ort.get_device(), ort.get_available_providers())
print("NVML sees", pynvml.nvmlDeviceGetCount(), "GPU(s)")
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu is not in use"
EOF
"$VENV/bin/pip" install -q "${pip_args[@]}" scikit-image \
    || echo "note: no scikit-image: a synthetic image is used"
echo "installed in $(( $(date +%s) - START )) s"

CUDA_VISIBLE_DEVICES="" PYTHONPATH="$REPO" "$VENV/bin/python" - "$MODELS" "$GPU" "$N" <<'EOF'
"""Run the service on the GPU and on the CPU for each model, compare, time."""
import base64, json, os, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

import cv2
import numpy as np

models_dir, gpu, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
models = sorted(models_dir.glob("*.onnx"))
assert models, f"no models in {models_dir}"
rng = np.random.default_rng(7)
try:                # a photograph with people in it (scikit-image's astronaut)
    from skimage import data
    image = np.ascontiguousarray(data.astronaut()[..., ::-1])
except ImportError:  # else a synthetic scene of rectangles (few or no detections)
    image = np.full((480, 640, 3), 90, np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, 560), rng.integers(0, 400)
        cv2.rectangle(image, (int(x), int(y)), (int(x) + 80, int(y) + 80),
                      tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
payload = json.dumps({"image": base64.b64encode(cv2.imencode(".jpg", image)[1]).decode(),
                      "confidence": 0.25}).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, data=None, timeout=30):
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run(model, device):
    port = free_port()
    argv = [os.path.join(os.path.dirname(sys.executable), "cnet-inference-yolo"), "--model",
            str(model), "--port", str(port), "--workers", "1"]
    if device != "cpu":
        argv += ["--device", device]
    proc = subprocess.Popen(argv, stdout=sys.stderr, stderr=sys.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if call(base + "/health", timeout=2).get("status") in ("ok", "healthy", True):
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{model.name} on {device}: the service did not start")
            time.sleep(0.2)
        info = call(base + "/info")
        first = call(base + "/predict", payload)      # warm-up (CUDA kernels, arenas)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            out = call(base + "/predict", payload)
            times.append((time.perf_counter() - t) * 1000)
        return info, out["detections"], statistics.median(times), first
    finally:
        proc.terminate()
        proc.wait(10)


failed = False
for model in models:
    ginfo, gdet, gp50, _ = run(model, gpu)
    cinfo, cdet, cp50, _ = run(model, "cpu")
    provider = ginfo.get("provider") or ginfo.get("workers", [{}])[0].get("provider")
    same = len(gdet) == len(cdet) and all(
        g["class_id"] == c["class_id"] and abs(g["confidence"] - c["confidence"]) < 0.02
        and np.allclose(g["bbox"] if "bbox" in g else g["box"], c["bbox"] if "bbox" in c else c["box"], atol=2.0)
        for g, c in zip(sorted(gdet, key=lambda d: -d["confidence"]),
                        sorted(cdet, key=lambda d: -d["confidence"])))
    failed |= provider != "CUDAExecutionProvider" or not same
    print(f"{model.name}: provider {provider}; {len(gdet)} GPU vs {len(cdet)} CPU detections "
          f"{'equal' if same else 'DIFFER'}; p50 GPU {gp50:.2f} ms, CPU {cp50:.2f} ms")
sys.exit(1 if failed else 0)
EOF
echo "check.sh finished in $(( $(date +%s) - START )) s"
