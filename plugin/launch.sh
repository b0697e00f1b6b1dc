#!/bin/sh
# PlexSync's launcher, packaged as `plexsync` beside PlexSync.yml. Stash
# runs `<plugin folder>/plexsync` (the manifest's exec); on Linux and macOS
# that is this script, which runs the static binary built for this machine.
# On Windows Stash finds `plexsync.exe` in the same folder instead.
# One `uname`, then exec: the binary inherits Stash's stdin and stdout.
here=${0%/*}
case $(uname -sm) in
  "Linux x86_64" | "Linux amd64") target=x86_64-unknown-linux-musl ;;
  "Linux aarch64" | "Linux arm64" | "Linux armv8l") target=aarch64-unknown-linux-musl ;;
  "Linux armv7l") target=armv7-unknown-linux-musleabihf ;;
  "Linux armv6l") target=arm-unknown-linux-musleabihf ;;
  "Darwin arm64") target=aarch64-apple-darwin ;;
  "Darwin x86_64") target=x86_64-apple-darwin ;;
  *) target=unknown ;;
esac
binary="$here/bin/$target/plexsync"
if [ ! -x "$binary" ]; then
  # Stash shows a raw plugin's `error`; say what is missing, not just "exit 1".
  message="PlexSync has no binary for this machine ($(uname -sm)) in $here/bin; see the README's install section"
  printf '{"error": "%s"}\n' "$message"
  echo "$message" >&2
  exit 1
fi
exec "$binary" "$@"
