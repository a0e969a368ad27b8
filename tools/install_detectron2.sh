#!/usr/bin/env bash
# Install detectron2 into the Python environment given as $1 (default: python3).
#
# Route 1: `import detectron2` already works -> nothing to do.
# Route 2: DETECTRON2_SRC points at a detectron2 source checkout -> `pip install -e` it
#          (this compiles detectron2's C++/CUDA ops; needs a compiler, and nvcc for GPU ops).
# Route 3: the `sal-detectron2==0.7.2` wheel from PyPI: upstream detectron2's Python code
#          (early 2024) built for cp310. Its pure-Python part runs on 3.10+; RegionCLIP needs
#          none of its compiled ops (RoIAlign and NMS come from torchvision).
# Prints which route was used.
set -euo pipefail
PY="${1:-python3}"
D2_VERSION="0.7.2"

if "$PY" -c "import detectron2" >/dev/null 2>&1; then
    echo "[install_detectron2] route: already installed ($("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))'))"
    exit 0
fi

if [ -n "${DETECTRON2_SRC:-}" ]; then
    echo "[install_detectron2] route: source checkout at $DETECTRON2_SRC"
    "$PY" -m pip install --no-build-isolation -e "$DETECTRON2_SRC"
    exit 0
fi

echo "[install_detectron2] route: sal-detectron2==$D2_VERSION wheel (Python code of upstream detectron2)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.10 -d "$TMP" "sal-detectron2==$D2_VERSION"
WHL="$(ls "$TMP"/sal_detectron2-*.whl | head -n1)"
# The wheel is tagged cp310-linux; its contents are pure Python for our purposes, so install it
# under a py3-none-any name (`wheel tags` refuses to retag it).
cp "$WHL" "$TMP/sal_detectron2-$D2_VERSION-py3-none-any.whl"
# --no-deps: its metadata pins are for 3.10; the runtime dependencies are in requirements.txt.
"$PY" -m pip install --no-deps "$TMP/sal_detectron2-$D2_VERSION-py3-none-any.whl"
