#!/usr/bin/env bash
# Collects natural photos for calibrating DINOv2 into DIR (default: target/dinov2-calib), never
# including the evaluation photos (scikit-image's chelsea, coffee, astronaut, which make up
# /work/shared/models/dinov2-small-imgfocus/input.safetensors).
# Sources: scikit-image's bundled photos (pip package scikit-image) and the nature wallpapers of
# the Debian packages mate-backgrounds and ukui-wallpapers (apt-get install), and the natural
# photos among OpenCV's sample images (Debian package opencv-doc, fetched with apt-get download
# and unpacked in a temporary folder, not installed): object-centric close-ups (animals, fruit,
# people, street scenes) that the wallpapers lack. OBJECT_PHOTOS=0 leaves the OpenCV photos out
# (the 34-photo set of the earlier runs in docs/RESULTS.md).
set -euo pipefail
dir="${1:-target/dinov2-calib}"
object_photos="${OBJECT_PHOTOS:-1}"
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
if [ "$object_photos" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1 || { apt-get update -qq && apt-get download opencv-doc >/dev/null 2>&1; })
  dpkg-deb -x "$tmp"/opencv-doc_*.deb "$tmp/x"
  ex="$tmp/x/usr/share/doc/opencv-doc/examples"
  for f in aero1.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png board.jpg box_in_scene.png building.jpg \
           butterfly.jpg chicky_512.png ela_original.jpg fruits.jpg graf1.png home.jpg leuvenA.jpg \
           licenseplate_motion.jpg messi5.jpg orange.jpg rubberwhale1.png smarties.png squirrel_cls.jpg \
           starry_night.jpg stuff.jpg; do
    cp "$ex/data/$f" "$dir/opencv-$f"
  done
  cp "$ex/hfs/data/000.jpg" "$dir/opencv-hfs-robin.jpg"
fi
# The evaluation photos must not be among the calibration photos.
if ls "$dir" | grep -Eiq 'chelsea|coffee|astronaut'; then
  echo "evaluation photo found in $dir" >&2
  exit 1
fi
ls "$dir" | wc -l
