#!/usr/bin/env bash
# Writes the release rockspec and source rock for a tag of the repository:
#
#   rocks/release.sh URL TAG [OUTDIR]     (make rock ROCK_URL=... ROCK_TAG=...)
#
#   URL     the repository as LuaRocks fetches it: git+https://host/path.git
#           where the project is published (git+file:///path for a local one)
#   TAG     vX.Y.Z; the rock's version is X.Y.Z-1
#   OUTDIR  where clusterkit-X.Y.Z-1.rockspec and .src.rock go (default .)
#
# The rockspec comes from the tagged tree itself (rocks/clusterkit-scm-1.rockspec
# there), so its build section matches the sources it builds; only the version
# and the source (URL and tag) change. `luarocks pack` then clones URL at TAG
# into the source rock, the way `luarocks install` of the rockspec would.
# Nothing is pushed or tagged here.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: rocks/release.sh URL TAG [OUTDIR]" >&2
  exit 2
fi
url=$1 tag=$2 out=$(realpath -m "${3:-.}")
version=${tag#v}
case $version in
  [0-9]*.[0-9]*) ;;
  *) echo "rocks/release.sh: tag $tag is not vX.Y.Z" >&2; exit 2 ;;
esac
case $url in
  git+*) repo=${url#git+} ;;
  git://*) repo=$url ;;
  *) echo "rocks/release.sh: URL must be a git URL for LuaRocks (git+https://..., git+file://...)" >&2; exit 2 ;;
esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

git clone -q --depth 1 --branch "$tag" "$repo" "$work/src" 2>/dev/null ||
  git clone -q --branch "$tag" "$repo" "$work/src"
scm="$work/src/rocks/clusterkit-scm-1.rockspec"
[ -f "$scm" ] || { echo "rocks/release.sh: $tag has no rocks/clusterkit-scm-1.rockspec" >&2; exit 1; }

# The scm rockspec's `version = "scm-1"` and its `source = { ... }` block (up
# to the first line that is only "}") are replaced; everything else is kept.
rockspec="$out/clusterkit-$version-1.rockspec"
mkdir -p "$out"
awk -v version="$version-1" -v url="$url" -v tag="$tag" '
  /^version = / { print "version = \"" version "\""; next }
  /^source = \{/ { skipping = 1
    print "source = {"
    print "  url = \"" url "\","
    print "  tag = \"" tag "\","
    print "}"
    next }
  skipping && /^}/ { skipping = 0; next }
  !skipping { print }
' "$scm" > "$rockspec"
if ! grep -q "^version = \"$version-1\"" "$rockspec" || ! grep -q "^  tag = \"$tag\"," "$rockspec"; then
  echo "rocks/release.sh: could not rewrite $scm" >&2
  exit 1
fi
luarocks --lua-version=5.1 lint "$rockspec"
(cd "$out" && luarocks --lua-version=5.1 pack "$rockspec" >/dev/null)
echo "$rockspec"
echo "$out/clusterkit-$version-1.src.rock"
