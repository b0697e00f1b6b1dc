#!/usr/bin/env python3
"""Checks the Plex emulator against python-plexapi, the reference Plex client.

    pip install plexapi
    cargo run -p emulators --bin plex-emulator -- --port 32400 --token secret &
    python3 scripts/check_plexapi.py http://127.0.0.1:32400 secret

Connects with plexapi's own PlexServer, lists sections, pages through every
item of the movie section, reads a file path, edits a title and a genre with
plexapi's edit calls, and reads both back. Exits non-zero on any mismatch.
"""
import sys

from plexapi.server import PlexServer


def main(url: str, token: str) -> int:
    plex = PlexServer(url, token)
    print(f"server: {plex.friendlyName} {plex.version} ({plex.machineIdentifier})")
    sections = plex.library.sections()
    print("sections:", [(s.key, s.title, s.type, s.locations) for s in sections])
    movies = next(s for s in sections if s.type == "movie")
    total = movies.totalSize
    # plexapi pages with X-Plex-Container-Start/Size; use a small page to cross many pages.
    items = movies.search(container_size=37)
    print(f"paged through {len(items)} items (section totalSize {total})")
    assert len(items) == total, (len(items), total)
    keys = [i.ratingKey for i in items]
    assert len(set(keys)) == len(keys), "duplicate items across pages"

    item = items[0]
    path = item.media[0].parts[0].file
    print(f"first item {item.ratingKey}: {item.title!r} file={path!r}")
    assert path.startswith(movies.locations[0]), path

    new_title = "Edited by plexapi & friends = #1 ünïcödé"
    item.editTitle(new_title)
    item.addGenre("Check Genre")
    item.reload()
    print(f"after edit: title={item.title!r} genres={[g.tag for g in item.genres]} "
          f"locked={[f.name for f in item.fields if f.locked]}")
    assert item.title == new_title, item.title
    assert "Check Genre" in [g.tag for g in item.genres]
    assert item.isLocked("title")
    item.removeGenre("Check Genre")
    item.reload()
    assert "Check Genre" not in [g.tag for g in item.genres]
    print("plexapi check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
