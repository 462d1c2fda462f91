#!/usr/bin/env bash
# How much CPU the desktop app uses while messages pour in: the real `sotto`
# window under Xvfb, a real relay on 127.0.0.1 and a sotto-cli peer (bob)
# sending RATE messages a second to the lobby for SECONDS seconds; the app's
# CPU time (user and system, from /proc/PID/stat) over that time, and over as
# long idle before it, in cores (CPU seconds per second); and, for
# comparison, what a sotto-cli receiving the same messages uses (the
# session's own work, which the app does too, on its session thread).
#
# Needs (Debian): apt-get install -y xvfb xdotool fonts-dejavu-core
# Usage: scripts/app-load.sh [RATE [SECONDS]]   (defaults: 100 messages/s, 20 s)
#   SOTTO_APP=PATH measures another build of the app (a baseline);
#   LOAD_SHOT=FILE.png keeps a screenshot of the window at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

rate=${1:-100}
seconds=${2:-20}
cargo build -q -p sotto-app -p sotto-cli
cargo build -q -p sotto-relay --bin relay
bin=${CARGO_TARGET_DIR:-target}/debug
app=${SOTTO_APP:-$bin/sotto}
work=$(mktemp -d /tmp/sotto-app-load.XXXXXX)
cleanup() {
    pkill -f -- "$work" 2>/dev/null || true
    kill "$(jobs -p)" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export DISPLAY=:${LOAD_DISPLAY:-96}
Xvfb "$DISPLAY" -screen 0 1100x720x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
sleep 1

"$bin/relay" --listen 127.0.0.1:17601 --host 127.0.0.1 --data-dir "$work/relay" \
    >"$work/relay.out" 2>"$work/relay.log" &
for _ in $(seq 100); do
    grep -q '^address: ' "$work/relay.out" 2>/dev/null && break
    sleep 0.1
done
address=$(sed -n 's/^address: //p' "$work/relay.out")

# Bob: a sotto-cli reading the lines to send from a pipe.
SOTTO_PASSPHRASE="passphrase of bob" "$bin/sotto-cli" --data-dir "$work/bob" \
    init --name bob >/dev/null 2>&1
mkfifo "$work/bob.in"
(tail -f "$work/bob.in" | SOTTO_PASSPHRASE="passphrase of bob" "$bin/sotto-cli" \
    --data-dir "$work/bob" connect "$address" >"$work/bob.out" 2>&1) &

# Carol: a sotto-cli receiving the same messages, whose CPU is what the
# session alone costs (decrypting, storing, receipts), without a window.
SOTTO_PASSPHRASE="passphrase of carol" "$bin/sotto-cli" --data-dir "$work/carol" \
    init --name carol >/dev/null 2>&1
mkfifo "$work/carol.in"
(tail -f "$work/carol.in" | SOTTO_PASSPHRASE="passphrase of carol" "$bin/sotto-cli" \
    --data-dir "$work/carol" connect "$address" >"$work/carol.out" 2>&1) &

# Alice: the app, unlocked and connected as a person would.
SOTTO_PASSPHRASE="passphrase of alice" "$bin/sotto-cli" --data-dir "$work/alice" \
    init --name alice >/dev/null 2>&1
"$app" --data-dir "$work/alice" >"$work/alice.log" 2>&1 &
pid=$!
window=$(xdotool search --sync --name '^sotto$' | head -1)
xdotool windowfocus "$window"
sleep 2
xdotool type --delay 5 "passphrase of alice"
xdotool key Return
sleep 4
xdotool type --delay 2 "$address"
xdotool key Return
sleep 5
echo "hello from bob" >"$work/bob.in"
sleep 3

carol=$(pgrep -f -- "--data-dir $work/carol connect")
ticks() { awk '{print $14 + $15}' "/proc/${1:-$pid}/stat"; }
hz=$(getconf CLK_TCK)
cores() { # TICKS SECONDS
    python3 -c "print(f'{$1 / $hz / $2:.3f}')"
}

before=$(ticks)
sleep "$seconds"
idle=$(( $(ticks) - before ))

before=$(ticks)
carol_before=$(ticks "$carol")
python3 - "$work/bob.in" "$rate" "$seconds" <<'EOF'
import sys, time
path, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "w", buffering=1) as pipe:
    start = time.monotonic()
    for i in range(rate * seconds):
        pipe.write(f"message {i} of a steady stream, the quick brown fox\n")
        wait = start + (i + 1) / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
EOF
busy=$(( $(ticks) - before ))
carol_busy=$(( $(ticks "$carol") - carol_before ))
sleep 2
# What the window shows at the end (the last messages), if asked for.
if [ -n "${LOAD_SHOT:-}" ]; then
    xwd -root -silent | convert xwd:- "$LOAD_SHOT"
fi

echo "app: $app"
echo "idle for ${seconds} s: $(cores "$idle" "$seconds") core"
echo "bob sending ${rate} messages/s for ${seconds} s: $(cores "$busy" "$seconds") core"
echo "the same messages received by sotto-cli (the session alone): $(cores "$carol_busy" "$seconds") core"
kill -0 "$pid" 2>/dev/null || { echo "the app died" >&2; exit 1; }
