#!/usr/bin/env bash
# Replaces third_party/rustsec-advisory-db with the current RustSec database.
# Needs GitHub; run it where GitHub is reachable and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=third_party/rustsec-advisory-db
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git clone --quiet --depth 1 https://github.com/rustsec/advisory-db "$tmp/db"
commit=$(git -C "$tmp/db" log -1 --format=%H)
day=$(git -C "$tmp/db" log -1 --format=%cs)
rm -rf "$dest/crates" "$dest/rust" "$dest/LICENSES" "$dest/LICENSE.txt"
git -C "$tmp/db" archive HEAD crates rust LICENSE.txt LICENSES | tar -x -C "$dest"
sed -i -E "s/\`[0-9a-f]{40}\` \([0-9-]+\)/\`$commit\` ($day)/" "$dest/SOURCE.md"
echo "advisory database now at $commit ($day); run: cargo run -p switchboard-advisories"
