#!/usr/bin/env bash
# Reproduces the compression results table (docs/RESULTS.md-ready markdown on stdout and in
# $OUT/results.md): the ablation rows
#   M1 plain SVD, uniform ranks          --method svd --uniform-ranks --no-compensation
#   M2 activation-aware, uniform ranks   --uniform-ranks --no-compensation
#   M3 + mixed ranks (sensitivity)       --no-compensation
#   M4 + residual term (sparse, fc2)     --sparse $SPARSE --no-compensation
#   M5 + compensation                    --sparse $SPARSE   (residual-stream target: the default)
#   M6 compensation without sparse       (the CLI defaults: whitened, mixed ranks, compensation)
#   M7 M5 with layer-only targets        --sparse $SPARSE --no-residual-target
# at Fashion-MNIST keep 0.4/0.2/0.1 (fmnist-deit-tiny, optionally fmnist-deit-small) and DINOv2
# keep 0.7/0.6/0.5, each with its quality metric, file size and compression time; then the
# "large to small" row (fmnist-deit-small compressed to fmnist-deit-tiny's parameter count); and
# the downstream figures of DINOv2 (issue 16): the CLI defaults at keep 0.7 and 0.5 (DOWNSTREAM_KEEPS) with the
# small skimage15 calibration set (60 crops), evaluated by kNN retrieval agreement on the
# held-out crop set of scripts/retrieval-set.py (96 crops of 6 photos no calibration set uses) and
# by linear-probe agreement on 1,000 Fashion-MNIST images upscaled to 224 (scripts/linear-probe.py).
#
# Usage: scripts/results.sh [OUT_DIR]      (environment: SHARED, FMNIST, MODELS, STEPS, SPARSE,
#                                          CALIB_COUNT, DINO_CROPS, DINO_KEEPS, DOWNSTREAM_KEEPS,
#                                          THREADS)
# STEPS selects parts: "fmnist dino small2tiny downstream" (default: all four); ROW_IDS selects ablation
# rows by number (default: "1 2 3 4 5 6 7"), e.g. ROW_IDS="1 2 3 4" for the rows without
# compensation.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-target/results}"
SHARED="${SHARED:-/work/shared}"
FMNIST="${FMNIST:-/usr/share/datasets/fashion-mnist}"
MODELS="${MODELS:-fmnist-deit-tiny}"
STEPS="${STEPS:-fmnist dino small2tiny downstream}"
SPARSE="${SPARSE:-0.25}"
CALIB_COUNT="${CALIB_COUNT:-256}"
DINO_CROPS="${DINO_CROPS:-8}"
DINO_KEEPS="${DINO_KEEPS:-0.7 0.6 0.5}"
DOWNSTREAM_KEEPS="${DOWNSTREAM_KEEPS:-0.7 0.5}"
THREADS="${THREADS:-0}"
ROW_IDS="${ROW_IDS:-1 2 3 4 5 6 7}"
mkdir -p "$OUT"
cargo build --release -p factorvit-compress --bin factorvit >&2
BIN="${CARGO_TARGET_DIR:-target}/release/factorvit"
MD="$OUT/results.md"
: > "$MD"
say() { echo "$*" | tee -a "$MD"; }

ROWS=("M1 plain SVD, uniform|--method svd --uniform-ranks --no-compensation"
      "M2 activation-aware, uniform|--uniform-ranks --no-compensation"
      "M3 + mixed ranks|--no-compensation"
      "M4 + sparse residual (fc2)|--sparse $SPARSE --no-compensation"
      "M5 + compensation|--sparse $SPARSE"
      "M6 M3 + compensation (defaults)|"
      "M7 M5 with layer-only targets|--sparse $SPARSE --no-residual-target")
selected() { [[ " $ROW_IDS " == *" $(( $1 + 1 )) "* ]]; }

# compress NAME MODEL CALIB EXTRA... -> $OUT/NAME.fvit; prints "seconds bytes"
compress() {
  local name="$1" model="$2" calib="$3"; shift 3
  local t0 t1
  t0=$(date +%s.%N)
  "$BIN" --quiet compress --model "$model" --calib "$calib" -o "$OUT/$name.fvit" --threads "$THREADS" "$@" >&2
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc) $(stat -c %s "$OUT/$name.fvit")"
}

json_field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print('-' if v is None else v)" "$1" "$2"; }

if [[ " $STEPS " == *" fmnist "* ]]; then
  for m in $MODELS; do
    dense="$SHARED/models/$m"
    base=$("$BIN" --quiet eval --model "$dense" --data "$FMNIST" --json --threads "$THREADS")
    base_top1=$(json_field "$base" top1)
    say ""
    say "### $m on Fashion-MNIST (dense top-1 $(python3 -c "print(f'{100*$base_top1:.2f}')")%, 10k test images, $CALIB_COUNT calibration images)"
    say ""
    say "| keep | method | top-1 % (Δ pt) | agreement % | KL | file | time s |"
    say "|---|---|---|---|---|---|---|"
    for keep in 0.4 0.2 0.1; do
      names=(); infos=()
      for i in "${!ROWS[@]}"; do
        selected "$i" || continue
        label="${ROWS[$i]%%|*}"; flags="${ROWS[$i]#*|}"
        name="$m-k$keep-M$((i + 1))"
        # shellcheck disable=SC2086
        info=$(compress "$name" "$dense" "$FMNIST" --keep "$keep" --calib-count "$CALIB_COUNT" $flags)
        names+=("$OUT/$name.fvit"); infos+=("$label|$info")
      done
      args=(); for n in "${names[@]}"; do args+=(--model "$n"); done
      mapfile -t results < <("$BIN" --quiet eval "${args[@]}" --data "$FMNIST" --reference "$dense" --json --threads "$THREADS")
      for i in "${!results[@]}"; do
        r="${results[$i]}"; IFS='|' read -r label secs_bytes <<<"${infos[$i]}"
        read -r secs bytes <<<"$secs_bytes"
        python3 - "$r" "$base_top1" "$keep" "$label" "$secs" "$bytes" <<'PY' | tee -a "$MD"
import json, sys
r = json.loads(sys.argv[1]); base = float(sys.argv[2])
print(f"| {sys.argv[3]} | {sys.argv[4]} | {100*r['top1']:.2f} ({100*(r['top1']-base):+.2f}) | {100*r['agreement']:.2f} | {r['kl']:.2e} | {int(sys.argv[6])/2**20:.2f} MiB | {float(sys.argv[5]):.0f} |")
PY
      done
    done
  done
fi

if [[ " $STEPS " == *" dino "* ]]; then
  dense="$SHARED/models/dinov2-small-imgfocus"
  photos="$OUT/dinov2-calib"
  bash scripts/dinov2-calib-photos.sh "$photos" >&2
  say ""
  say "### dinov2-small-imgfocus (real weights): held-out chelsea/coffee/astronaut vs the dense model"
  say ""
  say "Calibration: $(ls "$photos" | wc -l) photos (scikit-image, mate-backgrounds, ukui-wallpapers, OpenCV samples; evaluation photos excluded) x $DINO_CROPS random crops, 224x224."
  say ""
  say "| keep | method | token cosine | pooled cosine | file | time s |"
  say "|---|---|---|---|---|---|"
  for keep in $DINO_KEEPS; do
    names=(); infos=()
    for i in "${!ROWS[@]}"; do
      selected "$i" || continue
      label="${ROWS[$i]%%|*}"; flags="${ROWS[$i]#*|}"
      name="dinov2-k$keep-M$((i + 1))"
      # shellcheck disable=SC2086
      info=$(compress "$name" "$dense" "$photos" --keep "$keep" --crops-per-image "$DINO_CROPS" --image-size 224 $flags)
      names+=("$OUT/$name.fvit"); infos+=("$label|$info")
    done
    args=(); for n in "${names[@]}"; do args+=(--model "$n"); done
    mapfile -t results < <("$BIN" --quiet eval "${args[@]}" --data "$dense/input.safetensors" --reference "$dense" --json --threads "$THREADS")
    for i in "${!results[@]}"; do
      r="${results[$i]}"; IFS='|' read -r label secs_bytes <<<"${infos[$i]}"
      read -r secs bytes <<<"$secs_bytes"
      python3 - "$r" "$keep" "$label" "$secs" "$bytes" <<'PY' | tee -a "$MD"
import json, sys
r = json.loads(sys.argv[1])
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['token_cosine']:.4f} | {r['pooled_cosine']:.4f} | {int(sys.argv[5])/2**20:.2f} MiB | {float(sys.argv[4]):.0f} |")
PY
    done
  done
fi

if [[ " $STEPS " == *" small2tiny "* ]]; then
  small="$SHARED/models/fmnist-deit-small"; tiny="$SHARED/models/fmnist-deit-tiny"
  info=$(compress small-as-tiny "$small" "$FMNIST" --match-model "$tiny" --calib-count "$CALIB_COUNT" --sparse "$SPARSE")
  read -r secs bytes <<<"$info"
  r=$("$BIN" --quiet eval --model "$OUT/small-as-tiny.fvit" --data "$FMNIST" --reference "$small" --json --threads "$THREADS")
  t=$("$BIN" --quiet eval --model "$tiny" --data "$FMNIST" --json --threads "$THREADS")
  params=$("$BIN" inspect "$OUT/small-as-tiny.fvit" | grep '^model:' | sed 's/model: \([0-9,]*\) parameters.*/\1/')
  tiny_params=$("$BIN" inspect "$tiny" | grep '^model:' | sed 's/model: \([0-9,]*\) parameters.*/\1/')
  say ""
  say "### Large to small: fmnist-deit-small compressed to fmnist-deit-tiny's parameter count"
  say ""
  say "| model | parameters | top-1 % | agreement with small % | time s |"
  say "|---|---|---|---|---|"
  python3 - "$r" "$t" "$params" "$secs" "$tiny_params" <<'PY' | tee -a "$MD"
import json, sys
r = json.loads(sys.argv[1]); t = json.loads(sys.argv[2])
print(f"| fmnist-deit-small compressed (--match-model tiny) | {sys.argv[3]} | {100*r['top1']:.2f} | {100*r['agreement']:.2f} | {float(sys.argv[4]):.0f} |")
print(f"| fmnist-deit-tiny trained | {sys.argv[5]} | {100*t['top1']:.2f} | - | - |")
PY
fi
if [[ " $STEPS " == *" downstream "* ]]; then
  dense="$SHARED/models/dinov2-small-imgfocus"
  calib="$OUT/calib60.safetensors"
  python3 scripts/calib-set.py --source skimage15 --crops-per-photo 4 -o "$calib" >&2
  bash scripts/retrieval-photos.sh "$OUT/retrieval-photos" >&2
  exclude=(); [ -d "$OUT/dinov2-calib" ] && exclude=(--exclude "$OUT/dinov2-calib")
  python3 scripts/retrieval-set.py --source "$OUT/retrieval-photos" --crops-per-photo 16 "${exclude[@]}" \
    -o "$OUT/retrieval96.safetensors" >&2
  names=(); infos=()
  for keep in $DOWNSTREAM_KEEPS; do
    info=$(compress "downstream-k$keep" "$dense" "$calib" --keep "$keep")
    names+=("$OUT/downstream-k$keep.fvit"); infos+=("$keep|$info")
  done
  say ""
  say "### dinov2-small-imgfocus downstream: kNN retrieval on 96 held-out crops (6 photos x 16), CLI defaults, skimage15 calibration (60 crops)"
  say ""
  say "| keep | pooled cosine | kNN top-1 agreement % | kNN top-5 overlap % | other-photo top-1 % | other-photo top-5 % | same other photo % | file |"
  say "|---|---|---|---|---|---|---|---|"
  args=(); for n in "${names[@]}"; do args+=(--model "$n"); done
  mapfile -t results < <("$BIN" --quiet eval "${args[@]}" --data "$OUT/retrieval96.safetensors" --reference "$dense" --json --threads "$THREADS")
  for i in "${!results[@]}"; do
    IFS='|' read -r keep secs_bytes <<<"${infos[$i]}"
    read -r _secs bytes <<<"$secs_bytes"
    python3 - "${results[$i]}" "$keep" "$bytes" <<'PY' | tee -a "$MD"
import json, sys
r = json.loads(sys.argv[1]); pct = lambda k: f"{100 * r[k]:.1f}"
print(f"| {sys.argv[2]} | {r['pooled_cosine']:.4f} | {pct('knn_top1_agreement')} | {pct('knn_top5_overlap')} | "
      f"{pct('knn_top1_agreement_other_labels')} | {pct('knn_top5_overlap_other_labels')} | "
      f"{pct('knn_top1_label_agreement_other_labels')} | {int(sys.argv[3])/2**20:.2f} MiB |")
PY
  done
  say ""
  probe=(); for n in "${names[@]}"; do probe+=(--model "$n"); done
  FACTORVIT="$BIN" python3 scripts/linear-probe.py --dense "$dense" "${probe[@]}" --threads "$THREADS" \
    --cache "$OUT/probe-cache" | tee -a "$MD"
fi
echo "wrote $MD" >&2
