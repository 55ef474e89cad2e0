#!/usr/bin/env bash
# Run bench/gpu_check.py once on a GPU box (no network needed) and keep its results.
#
#   bench/gpu_check.sh                     # full run (about 8 minutes), results in $OUT or
#                                          # ./gpu_check_results
#   bench/gpu_check.sh --quick             # about 3 minutes
#   bench/gpu_check.sh --pack FILE.tar.gz  # the ~100 KB of files it needs, to copy to the box
#
# The box needs Python with torch (CUDA build); numpy and pyarrow are used if there.
# PYTHON picks the interpreter (default python3); GPU_CHECK_TIMEOUT caps the run (480 s).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

if [ "${1:-}" = "--pack" ]; then
  [ -n "${2:-}" ] || { echo "usage: $0 --pack FILE.tar.gz" >&2; exit 2; }
  tar czf "$2" -C "$root" bench/gpu_check.py bench/gpu_check.sh bench/tv_lite.py \
    pipeline/decoders/routing.py tsm_model/__init__.py tsm_model/config.py tsm_model/shift.py \
    tsm_model/tsm.py tsm_model/online.py tsm_model/checkpoint.py
  ls -l "$2"
  echo "on the box: mkdir gpu_check && tar xzf $(basename "$2") -C gpu_check && gpu_check/bench/gpu_check.sh"
  exit 0
fi

out=${OUT:-gpu_check_results}
case " $* " in *" --out "*) out_arg=() ;; *) out_arg=(--out "$out") ;; esac
export PYTHONDONTWRITEBYTECODE=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/gpu_check_inductor}
cd "$root" || exit 1
"${PYTHON:-python3}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" \
  || { echo "no usable torch for ${PYTHON:-python3}" >&2; exit 1; }
timeout --signal=TERM --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" \
  "${PYTHON:-python3}" bench/gpu_check.py "${out_arg[@]}" "$@"
rc=$?
echo "gpu_check exit status $rc; results in ${out_arg[1]:-the --out folder}/results.md and results.json"
exit $rc
