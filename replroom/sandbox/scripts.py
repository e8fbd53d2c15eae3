"""Shell scripts that the exec-based backends (docker, kubernetes) run in a sandbox."""

from __future__ import annotations

# Writes its first $3 bytes of stdin to $1 with mode $2, as the room user:
# `head -c` needs no end of input, which Kubernetes' v4 exec protocol cannot send. The
# directory is made, then resolved: it must still be in the writable area
# after symlinks, and the file must not be a symlink or a directory. The file
# is renamed into place so that readers never see half of it.
PUT_FILE = """
set -e
path=$1
mkdir -p -- "${path%/*}"
dir=$(realpath -e -- "${path%/*}")
case "$dir/" in
    /home/room/*|/tmp/*) ;;
    *) echo "$path is outside the writable area (through a symlink)" >&2; exit 3 ;;
esac
target="$dir/${path##*/}"
if [ -L "$target" ] || [ -d "$target" ]; then
    echo "$path is a symlink or a directory" >&2; exit 3
fi
tmp=$(mktemp "$dir/.replroom-put.XXXXXX")
if head -c "$3" >"$tmp" && [ "$(wc -c <"$tmp")" -eq "$3" ] && chmod "$2" "$tmp"; then
    mv -f -- "$tmp" "$target"
else
    rm -f -- "$tmp"; echo "short write" >&2; exit 1
fi
"""


def put_file_argv(target: str, mode: int, size: int) -> list[str]:
    """The command that writes ``size`` bytes of stdin to ``target`` (see PUT_FILE)."""
    return ["/bin/sh", "-c", PUT_FILE, "put_file", target, f"{mode & 0o7777:o}", str(size)]


# Takes up to $3 files from the directory $1 (see Sandbox.take_files): for
# each, a line "size name", then, when size <= $2, exactly size bytes (padded
# with zeros or cut, should the room change the file meanwhile), and the file
# is removed. Entries with other names are removed; hidden ones (a file being
# written) and directories stay. Its stderr goes nowhere: an exec's output is
# stdout and stderr merged, and only the list may be in it. The size comes from
# wc -c on the open file (its size, not a read, for a regular file; gVisor has
# no statx flags for stat(1)).
TAKE_FILES = """
exec 2>/dev/null
dir=$(realpath -e -- "$1") || exit 0
case "$dir/" in
    /home/room/*|/tmp/*) ;;
    *) exit 0 ;;
esac
cd -- "$dir" || exit 0
n=0
for name in *; do
    [ -e "$name" ] || [ -L "$name" ] || continue
    [ -d "$name" ] && [ ! -L "$name" ] && continue
    case "$name" in
        [!A-Za-z0-9]*|*[!A-Za-z0-9._-]*) rm -f -- "$name"; continue ;;
    esac
    if [ -L "$name" ] || [ ! -f "$name" ] || [ ${#name} -gt 100 ]; then
        rm -f -- "$name"; continue
    fi
    [ "$n" -lt "$3" ] || break
    n=$((n + 1))
    size=$(wc -c <"$name") || continue
    printf '%s %s\\n' "$size" "$name"
    if [ "$size" -le "$2" ]; then
        { head -c "$size" -- "$name"; head -c "$size" /dev/zero; } | head -c "$size"
    fi
    rm -f -- "$name"
done
"""


def take_files_argv(directory: str, max_bytes: int, count: int) -> list[str]:
    """The command that takes files from ``directory`` (see TAKE_FILES)."""
    return ["/bin/sh", "-c", TAKE_FILES, "take_files", directory, str(max_bytes), str(count)]
