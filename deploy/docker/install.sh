#!/bin/sh
# The images' Python install, shared by both Dockerfiles and tests/deploy/test_image.py (which runs
# it into a venv where no Docker is), so the steps the test exercises are the steps the image runs.
#
#   install.sh VENV FLAVOR SRC     FLAVOR: cpu (torch's CPU build) or cuda (PyPI's CUDA build + NVML)
#
# Every version comes from constraints.txt beside this script; TORCH_INDEX_URL overrides where the
# CPU build of torch comes from (a mirror, or a local index).
set -eu
venv=$1
flavor=$2
src=$3
constraints="$src/deploy/docker/constraints.txt"

python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
case "$flavor" in
    cpu)
        $pip install --no-compile -c "$constraints" \
            --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" torch
        extras=""
        ;;
    cuda)
        $pip install --no-compile -c "$constraints" torch
        extras="[gpu]"
        ;;
    *)
        echo "install.sh: FLAVOR must be cpu or cuda, not $flavor" >&2
        exit 2
        ;;
esac
$pip install --no-compile -c "$constraints" "$src$extras"
"$venv/bin/seekd" --help >/dev/null
