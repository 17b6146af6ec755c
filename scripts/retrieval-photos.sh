#!/usr/bin/env bash
# Collects the held-out photos of the retrieval evaluation into DIR (default:
# target/retrieval-photos): photos that no calibration set of this repository uses.
#   skimage-{chelsea,coffee,astronaut}.png  scikit-image's three evaluation photos (those of
#                                           /work/shared/models/dinov2-small-imgfocus/input.safetensors)
#   matplotlib-grace_hopper.jpg             matplotlib's sample photo (pip download, not installed)
#   opencv-box.png, opencv-left.jpg         two photos of OpenCV's samples that
#                                           scripts/dinov2-calib-photos.sh does not take (a pasta
#                                           box, books on a desk; Debian opencv-doc, apt-get
#                                           download, not installed)
# The other photos of these packages are drawings, renders, charts, or second views of scenes
# that the calibration photos show (aero3, aloeR, graf3, leuvenB, basketball2, rubberwhale2,
# ela_modified), so they are left out. scripts/retrieval-set.py makes the crops and refuses any
# photo that is also in a calibration folder (--exclude).
set -euo pipefail
dir="${1:-target/retrieval-photos}"
mkdir -p "$dir"
if ! python3 -c "import skimage" 2>/dev/null; then
  pip install --quiet scikit-image
fi
skdata=$(python3 -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
for f in chelsea.png coffee.png astronaut.png; do
  cp "$skdata/$f" "$dir/skimage-$f"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps --only-binary :all: matplotlib -d "$tmp/mpl" >/dev/null
python3 - "$tmp"/mpl/matplotlib-*.whl "$dir/matplotlib-grace_hopper.jpg" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("matplotlib/mpl-data/sample_data/grace_hopper.jpg"))
PY
(cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1 || { apt-get update -qq && apt-get download opencv-doc >/dev/null 2>&1; })
dpkg-deb -x "$tmp"/opencv-doc_*.deb "$tmp/x"
for f in box.png left.jpg; do
  cp "$tmp/x/usr/share/doc/opencv-doc/examples/data/$f" "$dir/opencv-$f"
done
ls "$dir" | wc -l
