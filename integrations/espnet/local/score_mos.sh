#!/usr/bin/env bash
# Score every utterance of a Kaldi wav.scp with a torchmos MOS predictor.
#
# An evaluation stage for any ESPnet egs2 recipe (TTS, SE, codecs, ...): copy this file
# and score_mos.py into the recipe's local/ and run, e.g. after decoding:
#
#   local/score_mos.sh --nj 8 exp/tts_train/decode_test/test/wav/wav.scp exp/tts_train/decode_test/test/mos
#
# Writes <outdir>/utt2mos ("utt score" per line, sorted by utterance id) and
# <outdir>/result.txt (count, mean, std, min, max); logs are in <outdir>/logdir.
# wav.scp entries may be file paths, Kaldi pipes ("sox a.flac -t wav - |") or ark
# offsets ("dump/raw/test/data/format.1/data_wav.ark:123"); they are read with ESPnet's
# own readers (soundfile for files, kaldiio for pipes and arks).
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

nj=4                 # number of parallel jobs
model=distillmos     # torchmos model card (python -c "import torchmos; print(list(torchmos.hub.CARDS))")
reference=           # wav.scp of references (same utterance ids), for reference models only
cmd=                 # job runner, e.g. "utils/run.pl" or "utils/queue.pl --mem 4G"; default: local jobs
python=python3       # python interpreter with torchmos[integrations] installed
device=cpu           # cpu or cuda
batch_size=8         # utterances per forward pass
num_threads=1        # torch threads per job
precision=           # predictor precision option (e.g. bf16); empty: the model's default

help_message=$(cat << EOF
Usage: $0 [options] <wav.scp> <outdir>

Options:
  --nj <int>            number of parallel jobs (default: ${nj})
  --model <name>        torchmos model card (default: ${model})
  --reference <scp>     wav.scp of references, for reference models (default: none)
  --cmd <runner>        job runner such as utils/run.pl (default: local background jobs)
  --python <python>     python interpreter (default: ${python})
  --device <device>     cpu or cuda (default: ${device})
  --batch_size <int>    utterances per forward pass (default: ${batch_size})
  --num_threads <int>   torch threads per job (default: ${num_threads})
  --precision <name>    predictor precision option, e.g. bf16 (default: the model's)
EOF
)

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) echo "${help_message}"; exit 0 ;;
        --*)
            name=${1#--}; name=${name//-/_}
            case "${name}" in
                nj|model|reference|cmd|python|device|batch_size|num_threads|precision) ;;
                *) echo "$0: unknown option $1" >&2; echo "${help_message}" >&2; exit 1 ;;
            esac
            [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
            printf -v "${name}" '%s' "$2"
            shift 2 ;;
        *) break ;;
    esac
done

if [ $# -ne 2 ]; then
    echo "${help_message}" >&2
    exit 1
fi
wav_scp=$1
outdir=$2

[ -f "${wav_scp}" ] || { log "Error: ${wav_scp} does not exist"; exit 1; }
if [ -n "${reference}" ] && [ ! -f "${reference}" ]; then
    log "Error: --reference ${reference} does not exist"; exit 1
fi
case "${nj}" in ''|*[!0-9]*|0) log "Error: --nj must be a positive integer, got '${nj}'"; exit 1 ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
entry="${here}/score_mos.py"
logdir=${outdir}/logdir
mkdir -p "${logdir}"

n_utt=$(grep -c '[^[:space:]]' "${wav_scp}" || true)
[ "${n_utt}" -gt 0 ] || { log "Error: ${wav_scp} is empty"; exit 1; }
[ "${nj}" -le "${n_utt}" ] || nj=${n_utt}

log "Scoring ${n_utt} utterances of ${wav_scp} with ${model} in ${nj} jobs"
# contiguous parts, sizes as even as possible (like utils/split_scp.pl): ${logdir}/wav.JOB.scp
rm -f "${logdir}"/wav.*.scp "${logdir}"/utt2mos.*
awk -v n="${n_utt}" -v nj="${nj}" -v dir="${logdir}" '
    NF == 0 { next }
    {
        base = int(n / nj); extra = n % nj
        job = (k < extra * (base + 1)) ? int(k / (base + 1)) + 1 : int((k - extra) / base) + 1
        print > (dir "/wav." job ".scp"); k++
    }' "${wav_scp}"
for n in $(seq "${nj}"); do touch "${logdir}/wav.${n}.scp"; done

opts=(--model "${model}" --device "${device}" --batch_size "${batch_size}" --num_threads "${num_threads}")
[ -z "${reference}" ] || opts+=(--reference "${reference}")
[ -z "${precision}" ] || opts+=(--precision "${precision}")

if [ -n "${cmd}" ]; then
    # Kaldi-style runner: JOB is replaced by 1..nj in the command and the log name
    ${cmd} JOB=1:"${nj}" "${logdir}/score_mos.JOB.log" \
        "${python}" "${entry}" score "${opts[@]}" \
            "${logdir}/wav.JOB.scp" "${logdir}/utt2mos.JOB" \
        || { log "Error: some jobs failed; see ${logdir}/score_mos.*.log"; exit 1; }
else
    pids=()
    for n in $(seq "${nj}"); do
        "${python}" "${entry}" score "${opts[@]}" \
            "${logdir}/wav.${n}.scp" "${logdir}/utt2mos.${n}" \
            > "${logdir}/score_mos.${n}.log" 2>&1 &
        pids+=($!)
    done
    failed=0
    for n in "${!pids[@]}"; do
        if ! wait "${pids[$n]}"; then
            failed=$((failed + 1))
            log "Error: job $((n + 1)) failed:"
            tail -n 20 "${logdir}/score_mos.$((n + 1)).log" >&2 || true
        fi
    done
    [ "${failed}" -eq 0 ] || { log "Error: ${failed} of ${nj} jobs failed; see ${logdir}/score_mos.*.log"; exit 1; }
fi

parts=()
for n in $(seq "${nj}"); do parts+=("${logdir}/utt2mos.${n}"); done
"${python}" "${entry}" merge --model "${model}" --expected "${wav_scp}" "${outdir}" "${parts[@]}"

log "Wrote ${outdir}/utt2mos and ${outdir}/result.txt"
cat "${outdir}/result.txt"
