#!/bin/sh
# PlexSync's launcher, packaged as `plexsync` beside PlexSync.yml. Stash
# runs `<plugin folder>/plexsync` (the manifest's exec); on Linux and macOS
# that is this script, which runs the static binary built for this machine.
# On Windows Stash finds `plexsync.exe` in the same folder instead.
# The machine's target is worked out once per boot (`uname`) and kept in
# /tmp, which a reboot or a new container empties; later hooks pay for no
# extra process. Then exec: the binary inherits Stash's stdin and stdout.
here=${0%/*}
cache=${TMPDIR:-/tmp}/plexsync-launcher.target

detect() {
  case $(uname -sm) in
    "Linux x86_64" | "Linux amd64") echo x86_64-unknown-linux-musl ;;
    "Linux aarch64" | "Linux arm64" | "Linux armv8l") echo aarch64-unknown-linux-musl ;;
    "Linux armv7l") echo armv7-unknown-linux-musleabihf ;;
    "Linux armv6l") echo arm-unknown-linux-musleabihf ;;
    "Darwin arm64") echo aarch64-apple-darwin ;;
    "Darwin x86_64") echo x86_64-apple-darwin ;;
    *) echo unknown ;;
  esac
}

target=
[ -r "$cache" ] && read -r target < "$cache"
case $target in
  # Only names of our own binaries: the file is in a shared folder.
  x86_64-unknown-linux-musl | aarch64-unknown-linux-musl | armv7-unknown-linux-musleabihf | \
    arm-unknown-linux-musleabihf | aarch64-apple-darwin | x86_64-apple-darwin) ;;
  *)
    target=$(detect)
    { printf '%s\n' "$target" > "$cache"; } 2>/dev/null || :
    ;;
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
