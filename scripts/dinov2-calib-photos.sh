#!/usr/bin/env bash
# Collects natural photos for calibrating DINOv2 into DIR (default: target/dinov2-calib), never
# including the evaluation photos (scikit-image's chelsea, coffee, astronaut, which make up
# /work/shared/models/dinov2-small-imgfocus/input.safetensors).
# Sources: scikit-image's bundled photos (pip package scikit-image) and the nature wallpapers of
# the Debian packages mate-backgrounds and ukui-wallpapers (apt-get install).
set -euo pipefail
dir="${1:-target/dinov2-calib}"
mkdir -p "$dir"
if ! python3 -c "import skimage" 2>/dev/null; then
  pip install --quiet scikit-image
fi
if [ ! -d /usr/share/backgrounds/mate/nature ] || [ ! -f /usr/share/backgrounds/goldfish.png ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mate-backgrounds ukui-wallpapers) >/dev/null
fi
skdata=$(python3 -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
for f in rocket.jpg motorcycle_left.png motorcycle_right.png hubble_deep_field.jpg ihc.png retina.jpg \
         camera.png coins.png moon.png grass.png gravel.png brick.png page.png text.png horse.png cell.png color.png; do
  [ -f "$skdata/$f" ] && cp "$skdata/$f" "$dir/skimage-$f"
done
for f in /usr/share/backgrounds/mate/nature/*.jpg; do
  cp "$f" "$dir/mate-$(basename "$f")"
done
for f in calla.png city.png desert.png goldfish.png the-mouse.jpg; do
  [ -f "/usr/share/backgrounds/$f" ] && cp "/usr/share/backgrounds/$f" "$dir/ukui-$f"
done
# The evaluation photos must not be among the calibration photos.
if ls "$dir" | grep -Eiq 'chelsea|coffee|astronaut'; then
  echo "evaluation photo found in $dir" >&2
  exit 1
fi
ls "$dir" | wc -l
