#!/usr/bin/env bash
# A "--python" for ESPnet's enh.sh that adds torchmos' MOS criterion to enhancement training.
#
# enh.sh runs every Python step as "${python} ..." (default python=python3). Give it this
# file instead -- no edit of the shared TEMPLATE enh.sh:
#
#   ./enh.sh --python local/torchmos_python.sh ...     # or python=local/torchmos_python.sh in run.sh
#
# The two enhancement trainers, "-m espnet2.bin.enh_train" and "-m espnet2.bin.enh_tse_train"
# (statistics collection and training, also when espnet2.bin.launch starts them), run
# through local/enh_train.py, which registers the criterion "torchmos_mos" first. Every
# other call goes to ${TORCHMOS_PYTHON:-python3} unchanged.
set -euo pipefail

py=${TORCHMOS_PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ${py} unquoted, as enh.sh's ${python}: it may hold options ("python3 -X faulthandler")
# shellcheck disable=SC2086
if [ $# -ge 2 ] && [ "$1" = -m ]; then
    case "$2" in
        espnet2.bin.enh_train) shift 2; exec ${py} "${here}/enh_train.py" "$@" ;;
        espnet2.bin.enh_tse_train) shift 2; exec ${py} "${here}/enh_train.py" --task enh_tse "$@" ;;
    esac
fi
# shellcheck disable=SC2086
exec ${py} "$@"
