"""Writes a Stash plugin package and its source index (pkg/pkg's format).

    python3 scripts/zip_plugin.py STAGE ZIP INDEX VERSION DATE

The zip holds STAGE's files with their Unix modes (Stash extracts with
them, so the launcher and binaries stay executable) and fixed timestamps
(the same files give the same sha256). Stash writes the installed
package's `manifest` itself from the zip's file list, so none is packed.
"""

import hashlib
import os
import sys
import zipfile

FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def pack(stage: str, zip_path: str) -> None:
    files = []
    for root, _dirs, names in os.walk(stage):
        for name in names:
            full = os.path.join(root, name)
            files.append((os.path.relpath(full, stage).replace(os.sep, "/"), full))
    if any(name == "manifest" for name, _ in files):
        sys.exit("a file named 'manifest' would clash with the one Stash writes")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, full in sorted(files):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.create_system = 3  # Unix, so Go's zip reader uses the mode bits
            info.external_attr = (0o100000 | (os.stat(full).st_mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as f:
                z.writestr(info, f.read())


def yaml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> None:
    stage, zip_path, index_path, version, date = sys.argv[1:6]
    pack(stage, zip_path)
    with open(zip_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    index = "\n".join(
        [
            "- id: PlexSync",
            "  name: PlexSync",
            "  metadata:",
            "    description: "
            + yaml_string("Keeps Plex's metadata in step with Stash: queued, retried through Plex outages, matched by file path."),
            "  version: " + yaml_string(version),
            "  date: " + yaml_string(date),
            "  path: PlexSync.zip",
            "  sha256: " + sha256,
            "  requires: []",
            "",
        ]
    )
    with open(index_path, "w") as f:
        f.write(index)


if __name__ == "__main__":
    main()
