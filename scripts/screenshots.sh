#!/usr/bin/env bash
# Takes the screenshots in docs/screenshots/ from real windows: the sotto app
# under Xvfb, a real relay on 127.0.0.1 and sotto-cli peers, driven with
# xdotool the way a person would (typing, Tab, Enter, clicks).
#
# Needs (Debian): apt-get install -y xvfb xdotool x11-apps imagemagick xclip fonts-dejavu-core
# Usage: scripts/screenshots.sh
#
# Clicks use positions in the 1100x720 window; if a layout change moves a
# button, adjust the coordinates next to its comment.
set -euo pipefail
cd "$(dirname "$0")/.."

out=docs/screenshots
mkdir -p "$out"
cargo build -p sotto-app -p sotto-cli
cargo build -p sotto-relay --bin relay
bin=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d /tmp/sotto-screenshots.XXXXXX)
cleanup() {
    pkill -f -- "$work" 2>/dev/null || true
    kill "$(jobs -p)" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

export DISPLAY=:${SCREENSHOT_DISPLAY:-97}
Xvfb "$DISPLAY" -screen 0 1100x720x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
sleep 1

shot() { # NAME [SECONDS TO WAIT FIRST] [WIDTHxHEIGHT, of the window's top left]
    sleep "${2:-0.8}"
    xwd -root -silent | convert xwd:- -crop "${3:-1100x720}+0+0" +repage "$out/$1.png"
    echo "$out/$1.png"
}

start_relay() { # NAME PORT
    "$bin/relay" --listen "127.0.0.1:$2" --host 127.0.0.1 --data-dir "$work/$1" \
        >"$work/$1.out" 2>"$work/$1.log" &
    for _ in $(seq 100); do
        grep -q '^address: ' "$work/$1.out" 2>/dev/null && return
        sleep 0.1
    done
    echo "relay $1 did not start" >&2
    exit 1
}
address() { sed -n 's/^address: //p' "$work/$1.out"; }

start_peer() { # DIR NAME RELAY-ADDRESS: a sotto-cli reading lines from DIR.in
    SOTTO_PASSPHRASE="passphrase of $1" "$bin/sotto-cli" --data-dir "$work/$1" \
        init --name "$2" >/dev/null 2>&1
    mkfifo "$work/$1.in"
    (tail -f "$work/$1.in" | SOTTO_PASSPHRASE="passphrase of $1" "$bin/sotto-cli" \
        --data-dir "$work/$1" connect "$3" >"$work/$1.out" 2>&1) &
    sleep 1
}
say() { echo "$2" >"$work/$1.in"; sleep 0.3; }
click() { xdotool mousemove "$1" "$2" click 1; sleep 0.3; }
type_line() { xdotool type --delay 5 "$1"; xdotool key Return; sleep 0.4; }

start_relay relay 17501
start_peer bob bob "$(address relay)"
start_peer carol carol "$(address relay)"

# Saved files go to a folder of the run's own (the settings' downloads).
mkdir -m 700 "$work/alice"
printf '{"downloads": "%s"}\n' "$work/downloads" >"$work/alice/settings.json"

# Onboarding: name, passphrase twice (Tab between fields).
"$bin/sotto" --data-dir "$work/alice" >"$work/alice.log" 2>&1 &
window=$(xdotool search --sync --name '^sotto$' | head -1)
xdotool windowfocus "$window"
sleep 1
xdotool type --delay 5 "alice"
xdotool key Tab
xdotool type --delay 5 "correct horse battery staple"
xdotool key Tab
xdotool type --delay 5 "correct horse battery staple"
shot onboarding
xdotool key Return
shot onboarding-progress 0.3
for _ in $(seq 200); do
    [ -e "$work/alice/identity.sotto-id" ] && break
    sleep 0.1
done

# Connect: paste the relay's address.
sleep 1.5
xdotool type --delay 2 "$(address relay)"
shot connect
xdotool key Return
sleep 2

# Chat, then verification from the composer.
say bob "hi alice, welcome to the lobby"
say carol "hello from carol"
type_line "thanks both! shall we compare safety numbers?"
say bob "/msg alice sure, call me when you are ready"
type_line "/verify bob"
shot verify
xdotool key Escape
type_line "/verify bob yes"
say bob "done: I verified you too"
shot chat

# Files: bob sends a picture (previewed in the window), alice saves it with
# /save, pastes one, then opens the attach row and types the path of a file
# to send.
convert -size 420x260 gradient:'#2f6f9f-#f4c542' "$work/harbour.png"
printf 'minutes of the meeting\n' >"$work/minutes.txt"
say bob "/send $work/harbour.png"
sleep 2
type_line "/save"
# Alice pastes a picture copied to the clipboard (xclip owns it): Ctrl+V in
# the composer sends it as a file.
convert -size 300x120 gradient:'#7a3b69-#e8a87c' "$work/sunset.png"
xclip -selection clipboard -t image/png -i "$work/sunset.png"
xdotool key ctrl+v
for _ in $(seq 50); do
    grep -q 'pasted-.*\.png' "$work/bob.out" && break
    sleep 0.2
done
grep -q 'pasted-.*\.png' "$work/bob.out" || { echo "bob got no pasted image" >&2; exit 1; }
click 268 690 # Attach, left of the composer
xdotool type --delay 2 "$work/minutes.txt"
shot files 1.5
click 845 626 # Cancel, right of the attach row

# Settings: dark theme.
click 48 694 # Settings, bottom of the sidebar
shot settings
click 391 137 # Dark
click 798 47  # Done
shot chat-dark

# A verified contact's key changes: on another relay, mallory holds "bob".
start_relay relay2 17502
start_peer mallory bob "$(address relay2)"
click 137 694 # Disconnect, bottom of the sidebar
click 550 297 # the address field
xdotool key ctrl+a
xdotool type --delay 2 "$(address relay2)"
xdotool key Return
shot key-change 3
# The lobby carries a banner and goes on; bob's own conversation is blocked.
click 37 230 # bob, under Direct messages in the sidebar
shot key-change-direct

# A narrow window: the member list and the sidebar fold away.
click 37 130 # the lobby, in the sidebar
xdotool windowsize "$window" 600 620
shot chat-narrow 1.5 600x620
