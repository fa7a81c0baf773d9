#!/usr/bin/env bash
# Installs the system programs the project needs (ffmpeg, fluidsynth, a General MIDI
# soundfont; with --test also chromium and its driver, for the web app's browser test)
# with apt when they are missing. Does nothing when they are all present.
set -euo pipefail

soundfont_present() {
  for f in /usr/share/sounds/sf2/FluidR3_GM.sf2 /usr/share/sounds/sf2/TimGM6mb.sf2 \
           /usr/share/sounds/sf2/default-GM.sf2 /usr/share/soundfonts/default.sf2 \
           /usr/share/soundfonts/FluidR3_GM.sf2; do
    [ -f "$f" ] && return 0
  done
  [ -n "${MUSICGEN_SOUNDFONT:-}" ] && [ -f "${MUSICGEN_SOUNDFONT}" ]
}

missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v fluidsynth >/dev/null 2>&1 || missing+=(fluidsynth)
soundfont_present || missing+=(fluid-soundfont-gm)
if [ "${1:-}" = "--test" ]; then  # only the test suite needs a browser (the web app's page test)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Installing system packages: ${missing[*]}"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=""; fi
  fi
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
  fi
fi
# Only the browser is missing and it cannot be installed here: the page's browser test skips itself.
if [ "${missing[*]}" = "chromium chromium-driver" ] || [ "${missing[*]}" = "chromium" ] || [ "${missing[*]}" = "chromium-driver" ]; then
  echo "note: ${missing[*]} not installed (no root or sudo): the web page's browser test will be skipped." >&2
  exit 0
fi
echo "error: missing system packages: ${missing[*]}." >&2
echo "       Install them with your package manager (Debian/Ubuntu: sudo apt-get install ${missing[*]};" >&2
echo "       macOS: brew install ffmpeg fluid-synth and set MUSICGEN_SOUNDFONT to a .sf2 file), then re-run make." >&2
exit 1
