#!/usr/bin/env python3
"""Checks the Stash emulator against stashapp-tools, the client most Stash plugins use.

    pip install stashapp-tools
    cargo run -p emulators --bin stash-emulator -- --port 9999 --api-key secret &
    python3 scripts/check_stashapi.py 9999 secret

Connects with StashInterface (which also introspects the schema to build its
fragments), pages through scenes with find_scenes, filters by updated_at, and
updates a scene with update_scene. Exits non-zero on any mismatch.
"""
import sys
from datetime import datetime, timedelta

from stashapi.stashapp import StashInterface


def main(port: int, api_key: str) -> int:
    stash = StashInterface({"scheme": "http", "Host": "0.0.0.0", "Port": port, "ApiKey": api_key})
    print("stash version:", stash.version)
    count, first_page = stash.find_scenes(f={}, filter={"per_page": 25, "page": 1}, get_count=True)
    print(f"count={count}, first page {len(first_page)} scenes")
    assert len(first_page) == min(25, count)
    everything = stash.find_scenes(f={}, filter={"per_page": -1})
    assert len(everything) == count, (len(everything), count)
    scene = everything[0]
    print("scene:", scene["id"], repr(scene["title"]), scene["files"][0]["path"], scene["files"][0]["size"])
    assert scene["files"][0]["path"].startswith("/")

    stash.update_scene({"id": scene["id"], "title": "Edited via stashapp-tools"})
    again = stash.find_scene(scene["id"])
    assert again["title"] == "Edited via stashapp-tools", again["title"]
    # Stash keeps updated_at to the second: ask from one second before the first read.
    since = datetime.fromisoformat(scene["updated_at"].replace("Z", "+00:00")) - timedelta(seconds=1)
    changed = stash.find_scenes(
        f={"updated_at": {"value": since.isoformat(), "modifier": "GREATER_THAN"}},
        filter={"per_page": -1, "sort": "updated_at", "direction": "ASC"},
    )
    print("changed since first read:", [s["id"] for s in changed])
    assert scene["id"] in [s["id"] for s in changed]
    assert again["updated_at"] >= scene["updated_at"]
    print("stashapp-tools check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
