#!/usr/bin/env bash
# Gather real photographs from Debian wallpaper packages into OUT/train and OUT/eval (no photo in both), for training
# and evaluating super-resolution (ldm upscale). Prints the package each photo came from, then counts and sizes.
#
#   scripts/gather-photos.sh OUT [--force] [--max-side PX] [--crops N[:SIZE]]
#
# --max-side PX shrinks every photo larger than PX on its longer side to PX (Lanczos-3, antialiased) and writes it as
# PNG. At their own resolution most of these wallpapers are soft (shallow depth of field, 4-6 megapixel JPEGs), so a
# 4x downscale loses little; shrunk first (for example to 1024) they hold detail at every scale, as SR sets such as
# DIV2K do at 2K.
#
# --crops N:SIZE also cuts N random SIZE x SIZE crops (default size 64) from every training photo at its own
# resolution into OUT/train-crops/ (seeded, the same on every run): training data for a first-stage autoencoder,
# which `ldm train-ae` reads at one fixed size (a folder of whole photos would be shrunk to it).
#
# The packages are downloaded with `apt-get download` and unpacked with `dpkg -x` into a temporary folder: nothing is
# installed. Only files checked by eye to be photographs are taken (the packages also hold drawings, renders and
# gradients); the table below names each one. The eval split is fixed, chosen to span scenes: landscape, animal,
# close-up, indoor object, texture, dusk and forest. Debian's package lists must be reachable (run as root, or after
# `apt-get update`); the photos keep their own licences (see each package's copyright file).
set -euo pipefail

usage() { echo "usage: $0 OUT [--force] [--max-side PX] [--crops N[:SIZE]]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1
shift
FORCE=0
CROPS=
MAX_SIDE=
while [[ $# -gt 0 ]]; do
  case $1 in
    --force) FORCE=1 ;;
    --crops) [[ $# -ge 2 && $2 =~ ^[0-9]+(:[0-9]+)?$ ]] || usage; CROPS=$2; shift ;;
    --max-side) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; MAX_SIDE=$2; shift ;;
    *) usage ;;
  esac
  shift
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# split  package  path inside the package  name written
PHOTOS=$(cat <<'EOF'
train lomiri-wallpapers-16.04 usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg lomiri-bridge.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/Dragonfly_by_Bolly.jpg lomiri-dragonfly.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/Picture_0B_by_freespace.jpg lomiri-fig.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/Picture_1A_by_freespace.jpg lomiri-brushes.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg lomiri-drum.jpg
eval  lomiri-wallpapers-16.04 usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg lomiri-aitzgorri.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg lomiri-analogpattern.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/free_by_Peter_Nerlich.jpg lomiri-free.jpg
eval  lomiri-wallpapers-16.04 usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg lomiri-friends.jpg
eval  lomiri-wallpapers-16.04 usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg lomiri-greentock.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg lomiri-life.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg lomiri-picosdeeuropa.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg lomiri-seeding.jpg
train lomiri-wallpapers-16.04 usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg lomiri-sunset.jpg
train lomiri-wallpapers-20.04 usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg lomiri-kleiber.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/Aqua.jpg mate-aqua.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/Blinds.jpg mate-blinds.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/Dune.jpg mate-dune.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/FreshFlower.jpg mate-freshflower.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/Garden.jpg mate-garden.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/GreenMeadow.jpg mate-greenmeadow.jpg
eval  mate-backgrounds usr/share/backgrounds/mate/nature/LadyBird.jpg mate-ladybird.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/RainDrops.jpg mate-raindrops.jpg
eval  mate-backgrounds usr/share/backgrounds/mate/nature/Storm.jpg mate-storm.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/TwoWings.jpg mate-twowings.jpg
eval  mate-backgrounds usr/share/backgrounds/mate/nature/Wood.jpg mate-wood.jpg
train mate-backgrounds usr/share/backgrounds/mate/nature/YellowFlower.jpg mate-yellowflower.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg plasma-bythewater.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg plasma-coldripple.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg plasma-colorfulcups.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg plasma-darkesthour.jpg
eval  plasma-workspace-wallpapers usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg plasma-eveningglow.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg plasma-fallenleaf.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/Kite/contents/images/2560x1600.jpg plasma-kite.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg plasma-onestandsout.jpg
eval  plasma-workspace-wallpapers usr/share/wallpapers/Path/contents/images/2560x1600.jpg plasma-path.jpg
train plasma-workspace-wallpapers usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg plasma-summer1am.jpg
EOF
)

for split in train eval train-crops; do
  if [[ -d $OUT/$split ]] && [[ -n $(ls -A "$OUT/$split") ]] && [[ $FORCE -eq 0 ]]; then
    echo "$OUT/$split is not empty; pass --force to replace its photos" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
packages=$(awk '{print $2}' <<<"$PHOTOS" | sort -u)
if ! (cd "$tmp" && apt-get download -qq $packages >/dev/null 2>"$tmp/apt.log"); then
  # Package lists may be missing on a fresh machine: refresh them once and retry.
  apt-get update -qq
  (cd "$tmp" && apt-get download -qq $packages >/dev/null 2>"$tmp/apt.log") || { cat "$tmp/apt.log" >&2; exit 1; }
fi
for deb in "$tmp"/*.deb; do
  name=$(basename "$deb"); name=${name%%_*}
  echo "unpacking $name ($(dpkg-deb -f "$deb" Version))"
  mkdir -p "$tmp/x/$name"
  dpkg -x "$deb" "$tmp/x/$name"
done

mkdir -p "$OUT/train" "$OUT/eval"
while read -r split pkg src name; do
  file="$tmp/x/$pkg/$src"
  [[ -e $file ]] || { echo "$pkg no longer ships $src; update the table in $0" >&2; exit 1; }
  cp -L "$file" "$OUT/$split/$name"
  echo "$split/$name <- $pkg:/$src"
done <<<"$PHOTOS"

if [[ -n $MAX_SIDE ]]; then
  (cd "$ROOT" && node - "$MAX_SIDE" "$OUT/train" "$OUT/eval" <<'JS'
const sharp = require('sharp');
const fs = require('node:fs');
const path = require('node:path');
const max = Number(process.argv[2]);
(async () => {
  for (const dir of process.argv.slice(3)) {
    for (const name of fs.readdirSync(dir).sort()) {
      const file = path.join(dir, name);
      const m = await sharp(file).metadata();
      if (Math.max(m.width, m.height) <= max) continue;
      const out = path.join(dir, name.replace(/\.[^.]+$/, '.png'));
      const png = await sharp(file).rotate().resize(max, max, { fit: 'inside', kernel: 'lanczos3' }).png().toBuffer();
      if (out !== file) fs.rmSync(file);
      fs.writeFileSync(out, png);
    }
  }
})().catch((e) => { console.error(e); process.exit(1); });
JS
  )
  echo "shrunk to at most $MAX_SIDE pixels a side"
fi

if [[ -n $CROPS ]]; then
  rm -rf "$OUT/train-crops"
  mkdir -p "$OUT/train-crops"
  # sharp from the project's own dependencies; crop k of photo p sits where a seeded LCG puts it.
  (cd "$ROOT" && node - "$OUT/train" "$OUT/train-crops" "${CROPS%%:*}" "$([[ $CROPS == *:* ]] && echo "${CROPS##*:}" || echo 64)" <<'JS'
const sharp = require('sharp');
const fs = require('node:fs');
const path = require('node:path');
const [src, dst, n, size] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5])];
let seed = 12345;
const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
(async () => {
  for (const name of fs.readdirSync(src).sort()) {
    const img = sharp(path.join(src, name)).rotate();
    const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
    const stem = name.replace(/\.[^.]+$/, '');
    for (let k = 0; k < n; k++) {
      const left = Math.floor(rand() * (info.width - size + 1));
      const top = Math.floor(rand() * (info.height - size + 1));
      await sharp(data, { raw: info }).extract({ left, top, width: size, height: size }).png().toFile(path.join(dst, `${stem}-${String(k).padStart(3, '0')}.png`));
    }
  }
})().catch((e) => { console.error(e); process.exit(1); });
JS
  )
fi

for split in train eval train-crops; do
  [[ -d $OUT/$split ]] || continue
  n=$(find "$OUT/$split" -type f | wc -l)
  echo "$split: $n images, $(du -sh "$OUT/$split" | cut -f1)"
done
