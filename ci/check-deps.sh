#!/usr/bin/env bash
# The crate boundaries, checked on `cargo tree` (README, section Layout):
# - ordo-core is sans-I/O: nothing in its dependency tree (normal and build) may be a
#   socket, thread-pool, async, io_uring, libc or OS-binding crate;
# - ordo-nbd knows nothing of ordo: no ordo-* crate below it.
# Exits non-zero naming the crate and the offending dependency.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

# Crates a sans-I/O core must never pull in, directly or transitively.
core_banned='^(libc|socket2|io-uring|mio|tokio|async-std|smol|nix|rustix|crossbeam-channel|core_affinity|signal-hook|rayon|memmap2|getrandom|windows-sys|linux-raw-sys)$'

tree_of() { # crate -> the names in its normal and build dependency tree, one per line
    local tree
    tree=$(cargo tree --locked -p "$1" -e normal,build --prefix none --format '{p}')
    echo "$tree" | awk '{print $1}' | sort -u | grep -vx "$1" || true
}

core=$(tree_of ordo-core)
nbd=$(tree_of ordo-nbd)
status=0
if bad=$(echo "$core" | grep -E "$core_banned"); then
    echo "ordo-core must stay sans-I/O, but depends on: $(echo "$bad" | tr '\n' ' ')" >&2
    cargo tree --locked -p ordo-core -e normal,build -i "$(echo "$bad" | head -n1)" >&2 || true
    status=1
fi
if bad=$(echo "$nbd" | grep -E '^ordo-'); then
    echo "ordo-nbd must know nothing of ordo, but depends on: $(echo "$bad" | tr '\n' ' ')" >&2
    status=1
fi
if [ $status -eq 0 ]; then
    echo "crate boundaries: ordo-core sans-I/O ($(echo "$core" | wc -l) crates below it," \
        "none banned); ordo-nbd depends on no ordo crate"
fi
exit $status
