#!/usr/bin/env bash
# The purple LoRA (docs/experiments.md#purple-lora): teach the zoo's shapes-txt2img base a colour it never saw.
# train-lora at rank 8 on 200 purple shapes for at most 20 minutes, then eval-ldm, 200 samples each, DDIM 50, seed 0:
#   (a) "a large purple <kind> ..." prompts with the LoRA, (b) the same without it,
#   (c) the base's held-out captions with and without it; (d) the LoRA's size beside the base's (train-lora's JSON).
# usage: scripts/purple-lora.sh <base model.safetensors> <runs dir> <run name> [more train-lora flags, e.g. --text-encoder]
# The base's own evaluations are written once to <runs dir>/base-<hash>-*.json (the base file's hash and the
# evaluation settings in the name) and reused by later runs of the same base.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 <base model.safetensors> <runs dir> <run name> [train-lora flags...]" >&2; exit 2; }
BASE=$1 RUNS=$2 RUN=$3
shift 3
LDM=(node "$(dirname "$0")/../bin/run.js")
# Smaller settings only to check the script runs: TIME_LIMIT (minutes), CONDITIONS, EVAL_STEPS. DATA: the training set
# (with the six colours named too, e.g. shapes:train?only=purple,red,green,blue,yellow,white,black&count=1280, about 200
# purple images among the base's own: kohya's regularisation images, DreamBooth's prior preservation).
THREADS=${THREADS:-2} TIME_LIMIT=${TIME_LIMIT:-20} CONDITIONS=${CONDITIONS:-100} EVAL_STEPS=${EVAL_STEPS:-50}
DATA=${DATA:-shapes:train?only=purple&count=200}
# Every purple caption is cut after its place at max_len 16 ("purple" is spelt in 6 characters): the background is dropped.
PURPLE="shapes:train?only=purple,large&seed=1"
EVAL=(--conditions "$CONDITIONS" --n 2 --steps "$EVAL_STEPS" --sampler ddim --seed 0 --threads "$THREADS" --json)

"${LDM[@]}" train-lora --ckpt "$BASE" --data "$DATA" --rank 8 --run "$RUN" --runs-dir "$RUNS" \
  --time-limit "$TIME_LIMIT" --steps 100000 --threads "$THREADS" --seed 0 --json "$@" > "$RUNS/$RUN-train.json"
LORA=$RUNS/$RUN/lora.safetensors
BASE_TAG=base-$(sha256sum "$BASE" | cut -c1-12)-c$CONDITIONS-s$EVAL_STEPS

evaluate() { # <out.json> <data> [--lora file]
  local out=$1 data=$2
  shift 2
  [ -s "$out" ] || "${LDM[@]}" eval-ldm --ckpt "$BASE" --data "$data" "${EVAL[@]}" "$@" > "$out"
}
evaluate "$RUNS/$RUN-purple.json" "$PURPLE" --lora "$LORA"      # (a)
evaluate "$RUNS/$BASE_TAG-purple.json" "$PURPLE"                 # (b)
evaluate "$RUNS/$RUN-heldout.json" shapes:heldout --lora "$LORA" # (c) with
evaluate "$RUNS/$BASE_TAG-heldout.json" shapes:heldout           # (c) without

node -e '
const [runs, run, base] = process.argv.slice(1);
const r = (f) => JSON.parse(require("fs").readFileSync(`${runs}/${f}.json`, "utf8"));
const pct = (x) => (100 * x).toFixed(1) + "%";
const t = r(`${run}-train`), a = r(`${run}-purple`), b = r(`${base}-purple`), c1 = r(`${run}-heldout`), c0 = r(`${base}-heldout`);
console.log(`${run}: ${t.step} steps in ${t.seconds.toFixed(0)} s (${t.stopped})`);
console.log(`(a) judged purple with the LoRA: ${pct(a.details.colour_correct)} (kind ${pct(a.details.kind_correct)}, size ${pct(a.details.size_correct)}, position ${pct(a.details.position_correct)})`);
console.log(`(b) judged purple without it:    ${pct(b.details.colour_correct)}`);
console.log(`(c) held-out accepted: ${pct(c0.accuracy)} without, ${pct(c1.accuracy)} with (${(100 * (c1.accuracy - c0.accuracy)).toFixed(1)} points); read as purple with it: ${pct(c1.details.read_as_purple ?? 0)}`);
console.log(`(d) LoRA ${t.bytes} bytes, base ${t.baseBytes}: ${(100 * t.bytes / t.baseBytes).toFixed(2)}%`);
' "$RUNS" "$RUN" "$BASE_TAG"
