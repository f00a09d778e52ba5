#!/usr/bin/env bash
# Score every utterance of a Kaldi wav.scp with a torchmos MOS predictor.
#
# An evaluation stage for an ESPnet egs2 recipe (TTS, SE, codecs, ...), written like
# ESPnet's own scripts/utils/evaluate_*.sh: copy this file and score_mos.py into the
# recipe's local/ and run it from the recipe directory, e.g. after decoding:
#
#   local/score_mos.sh --gpu_inference true \
#       exp/tts_train/decode_test/test/wav/wav.scp exp/tts_train/decode_test/test/scoring/mos
#
# Writes <outdir>/utt2pmos ("utt score" per line, sorted by utterance id),
# <outdir>/avg_result.txt ("<model>: <mean>", collected into RESULTS.md by
# scripts/utils/show_tts_result.sh) and <outdir>/result.txt (count, mean, std, min, max);
# job logs are in <outdir>/logdir. wav.scp entries may be file paths, Kaldi pipes
# ("sox a.flac -t wav - |") or ark offsets ("dump/raw/test/data/format.1/data_wav.ark:123").
set -e
set -u
set -o pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
SECONDS=0

# General configuration
nj=                  # Number of parallel jobs (default: 4; with --gpu_inference true, the number of GPUs).
gpu_inference=false  # Whether to score on GPUs: jobs go through ${cuda_cmd} --gpu 1, one GPU each.
python=python3       # Python with torchmos[espnet] installed.

# Scoring related
model=distillmos     # torchmos model card; it names the results (python3 -c "import torchmos; print(torchmos.hub.list_cards())").
reference=           # wav.scp of references (same utterance ids), for reference models only.
inference_config=    # YAML of scorer options (batch_size, num_threads, precision, ...).
inference_args=      # Scorer options, e.g. "--batch_size 16 --precision bf16"; they override inference_config.
batch_size=          # Utterances per forward pass (default: 8, or inference_config's).
num_threads=         # Torch CPU threads per job (default: 1, or inference_config's).
precision=           # Predictor precision option, e.g. bf16 (default: the model's).

help_message=$(cat << EOF
Usage: $0 [options] <wav.scp> <outdir>

Options (each also settable in a --config file of name=value lines):
    # General configuration
    --nj                # Number of parallel jobs (default="${nj:-4, or one per GPU}").
    --gpu_inference     # Whether to score on GPUs (default="${gpu_inference}").
    --python            # Python with torchmos[espnet] installed (default="${python}").

    # Scoring related
    --model             # torchmos model card (default="${model}").
    --reference         # wav.scp of references, for reference models (default="${reference}").
    --inference_config  # YAML of scorer options (default="${inference_config}").
    --inference_args    # Scorer options, e.g. "--batch_size 16"; override inference_config.
    --batch_size        # Utterances per forward pass (default: 8).
    --num_threads       # Torch CPU threads per job (default: 1).
    --precision         # Predictor precision option, e.g. bf16 (default: the model's).

Jobs run through \${decode_cmd}, or \${cuda_cmd} with --gpu_inference true, from ./cmd.sh;
without them, as local background jobs.
EOF
)

log "$0 $*"
if [ -f utils/parse_options.sh ]; then
    # an egs2 recipe: Kaldi's option parser, as every ESPnet script uses
    # shellcheck disable=SC1091
    . utils/parse_options.sh
else
    # outside a recipe (no utils/): the same rules, built in. Options are "--name value"
    # for a variable defined above ("-" may stand for "_"); "--config file" sources a file
    # of name=value lines first, so the command line wins; "true"/"false" options only
    # take "true" or "false"; --help prints the usage and exits.
    _args=("$@")
    for ((_i = 0; _i + 1 < ${#_args[@]}; _i++)); do
        if [ "${_args[_i]}" = --config ]; then
            [ -r "${_args[_i + 1]}" ] || { echo "$0: missing config '${_args[_i + 1]}'" >&2; exit 1; }
            # shellcheck disable=SC1090
            . "${_args[_i + 1]}"
        fi
    done
    while [ $# -gt 0 ]; do
        case "$1" in
            -h|--help) echo "${help_message}" >&2; exit 0 ;;
            --*=*) echo "$0: options to scripts must be of the form --name value, got '$1'" >&2; exit 1 ;;
            --*)
                _name=${1#--}; _name=${_name//-/_}
                if [[ ! "${_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { [ "${_name}" != config ] && [ -z "${!_name+x}" ]; }; then
                    echo "$0: invalid option $1" >&2; exit 1
                fi
                [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
                if [ "${_name}" != config ]; then
                    case "${!_name}" in
                        true|false) case "$2" in true|false) ;; *)
                            echo "$0: expected \"true\" or \"false\": $1 $2" >&2; exit 1 ;; esac ;;
                    esac
                    printf -v "${_name}" '%s' "$2"
                fi
                shift 2 ;;
            *) break ;;
        esac
    done
fi

if [ $# -ne 2 ]; then
    log "${help_message}" >&2
    log "Error: expected <wav.scp> <outdir>, got $# positional argument(s)." >&2
    exit 2
fi
wav_scp=$1
outdir=$2

# an egs2 recipe's environment (python, PATH to utils/ for run.pl) and job runners
# shellcheck disable=SC1091
[ -f ./path.sh ] && . ./path.sh
# shellcheck disable=SC1091
[ -f ./cmd.sh ] && . ./cmd.sh

[ -f "${wav_scp}" ] || { log "Error: ${wav_scp} does not exist" >&2; exit 1; }
if [ -n "${reference}" ] && [ ! -f "${reference}" ]; then
    log "Error: --reference ${reference} does not exist" >&2; exit 1
fi
if [ -n "${inference_config}" ] && [ ! -f "${inference_config}" ]; then
    log "Error: --inference_config ${inference_config} does not exist" >&2; exit 1
fi

if "${gpu_inference}"; then
    _cmd=${cuda_cmd:-}
    _ngpu=1
    if [ -z "${nj}" ]; then
        # one job per GPU, as run.pl --gpu 1 runs at most that many at once
        nj=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        [ "${nj:-0}" -gt 0 ] || { log "Warning: nvidia-smi lists no GPU; using one job"; nj=1; }
    fi
else
    _cmd=${decode_cmd:-}
    _ngpu=0
    nj=${nj:-4}
fi
case "${nj}" in ''|*[!0-9]*|0) log "Error: --nj must be a positive integer, got '${nj}'" >&2; exit 1 ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
entry="${here}/score_mos.py"
logdir=${outdir}/logdir
mkdir -p "${logdir}"

n_utt=$(grep -c '[^[:space:]]' "${wav_scp}" || true)
[ "${n_utt}" -gt 0 ] || { log "Error: ${wav_scp} is empty" >&2; exit 1; }
_nj=$(( nj < n_utt ? nj : n_utt ))

# 1. Split the list into ${logdir}/wav.JOB.scp: contiguous parts in order, sizes as even
#    as possible (as utils/split_scp.pl splits, and torchmos.adapters.espnet_scp.split_scp)
rm -f "${logdir}"/wav.*.scp "${logdir}"/utt2pmos.* "${logdir}"/score_mos.*.log
awk -v n="${n_utt}" -v nj="${_nj}" -v dir="${logdir}" '
    NF == 0 { next }
    {
        base = int(n / nj); extra = n % nj
        job = (k < extra * (base + 1)) ? int(k / (base + 1)) + 1 : int((k - extra) / base) + 1
        print > (dir "/wav." job ".scp"); k++
    }' "${wav_scp}"

# 2. Score: one job per part; JOB is replaced by 1.._nj in the command and the log name
_opts=(--model "${model}" --ngpu "${_ngpu}" --job JOB)
[ -z "${inference_config}" ] || _opts+=(--config "${inference_config}")
[ -z "${reference}" ] || _opts+=(--reference "${reference}")
[ -z "${batch_size}" ] || _opts+=(--batch_size "${batch_size}")
[ -z "${num_threads}" ] || _opts+=(--num_threads "${num_threads}")
[ -z "${precision}" ] || _opts+=(--precision "${precision}")

run_local() {
    # a run.pl stand-in for use outside a recipe: [--gpu N] JOB=1:N <log> <command...>
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift 2; done
    local range=${1#JOB=} logfile=$2 j a pids=() failed=0
    shift 2
    for j in $(seq "${range%:*}" "${range#*:}"); do
        local args=()
        for a in "$@"; do args+=("${a//JOB/${j}}"); done
        { echo "# ${args[*]}"; "${args[@]}"; } > "${logfile//JOB/${j}}" 2>&1 &
        pids+=($!)
    done
    for j in "${pids[@]}"; do wait "${j}" || failed=$((failed + 1)); done
    [ "${failed}" -eq 0 ] || { echo "run_local: ${failed} of ${#pids[@]} jobs failed" >&2; return 1; }
}
[ -n "${_cmd}" ] || _cmd=run_local

log "Scoring ${n_utt} utterances of ${wav_scp} with ${model} in ${_nj} jobs (gpu_inference=${gpu_inference}); log: '${logdir}/score_mos.*.log'"
# shellcheck disable=SC2086
${_cmd} --gpu "${_ngpu}" JOB=1:"${_nj}" "${logdir}"/score_mos.JOB.log \
    ${python} "${entry}" score "${_opts[@]}" ${inference_args} \
        "${logdir}"/wav.JOB.scp "${logdir}"/utt2pmos.JOB \
    || { grep -l -i error "${logdir}"/score_mos.*.log | xargs -r tail -n 20 >&2 || true
         log "Error: scoring failed; see ${logdir}/score_mos.*.log" >&2; exit 1; }

# 3. Merge the parts
_parts=()
for n in $(seq "${_nj}"); do _parts+=("${logdir}/utt2pmos.${n}"); done
# shellcheck disable=SC2086
${python} "${entry}" merge --model "${model}" --expected "${wav_scp}" "${outdir}" "${_parts[@]}"

log "Wrote ${outdir}/utt2pmos, ${outdir}/avg_result.txt and ${outdir}/result.txt"
cat "${outdir}/avg_result.txt"
log "Successfully finished. [elapsed=${SECONDS}s]"
