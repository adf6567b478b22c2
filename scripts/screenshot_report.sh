#!/usr/bin/env bash
# Render a medurwkv report.html with headless Chromium and save a PNG screenshot, to check the page visually.
#
#   scripts/screenshot_report.sh RUN_DIR/report.html [OUT.png] [WIDTH,HEIGHT]
#
# OUT.png defaults to the report path with .png; the window defaults to 1280,2400 (the part of the page below
# that height is cut off). Needs `chromium` (Debian: apt-get install -y chromium) or `chromium-browser` /
# `google-chrome` on PATH, or CHROMIUM=/path/to/binary. No network access is needed: the report is
# self-contained, and the flags below stop Chromium's own background traffic.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 REPORT.html [OUT.png] [WIDTH,HEIGHT]" >&2
    exit 2
fi
report=$1
out=${2:-${report%.html}.png}
size=${3:-1280,2400}
if [[ ! -f $report ]]; then
    echo "error: report $report not found; build it with 'medurwkv report RUN_DIR'" >&2
    exit 2
fi
browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
    for b in chromium chromium-browser google-chrome; do
        if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
    done
fi
if [[ -z $browser ]]; then
    echo "error: no chromium found; install it (Debian: apt-get install -y chromium) or set CHROMIUM" >&2
    exit 3
fi

abs_report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
mkdir -p "$(dirname "$out")"
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$abs_out"

# --headless writes the screenshot and exits; timeout guards against a hung browser
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$profile" --window-size="$size" --screenshot="$abs_out" "file://$abs_report" \
    >/dev/null 2>"$profile/chromium.log" || true

if [[ ! -s $abs_out ]]; then
    echo "error: chromium wrote no screenshot; its log:" >&2
    cat "$profile/chromium.log" >&2
    exit 1
fi
echo "$abs_out"
