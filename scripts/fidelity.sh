#!/usr/bin/env bash
# Points the reference Python clients at the emulators: python-plexapi at the
# Plex emulator, stashapp-tools at the Stash emulator. Not part of the default
# tests (it needs PyPI); run it after changing an emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet plexapi stashapp-tools
cargo build --quiet -p emulators --bins
PLEX_PORT=${PLEX_PORT:-32410}
STASH_PORT=${STASH_PORT:-9910}
./target/debug/plex-emulator --port "$PLEX_PORT" --token fidelity-token --scenes 250 & plex=$!
./target/debug/stash-emulator --port "$STASH_PORT" --api-key fidelity-key --scenes 250 & stash=$!
trap 'kill $plex $stash 2>/dev/null' EXIT
sleep 1
python3 scripts/check_plexapi.py "http://127.0.0.1:$PLEX_PORT" fidelity-token
python3 scripts/check_stashapi.py "$STASH_PORT" fidelity-key
