#!/usr/bin/env bash
# Release artifacts into dist/ (make release), from this checkout:
#   rdma-shared-dp-<version>.oci.tar       the default image (.ci/build-image.sh) as an OCI archive:
#                                          `skopeo copy oci-archive:<file> docker://<registry>/...`
#                                          or `buildah pull oci-archive:<file>` loads it
#   rdma-shared-dp-<version>.tgz           the Helm chart (helm package)
#   rdma-shared-dp-<version>.cdx.json      CycloneDX SBOM of the image's Python packages, from the
#                                          pip installation reports inside the image (.ci/sbom.py)
#   SHA256SUMS                             `sha256sum -c SHA256SUMS` checks the three
# Environment: as .ci/build-image.sh (IMAGE, BASE_IMAGE, IMAGE_STORE, ...); DIST (default dist).
# Needs root, buildah (.ci/install-image-tools.sh) and the venv's helm (.ci/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)}"
IMAGE="${IMAGE:-rdma-shared-dp:${VERSION}}"
IMAGE_STORE="${IMAGE_STORE:-/var/cache/rdma-shared-dp/containers}"
DIST="${DIST:-dist}"
VENV="${VENV:-.venv}"
bah() { buildah --root "$IMAGE_STORE/storage" --runroot "$IMAGE_STORE/run" --storage-driver vfs "$@"; }

mkdir -p "$DIST"
rm -f "$DIST"/rdma-shared-dp-* "$DIST/SHA256SUMS"
archive="$DIST/rdma-shared-dp-$VERSION.oci.tar"
IMAGE="$IMAGE" VERSION="$VERSION" IMAGE_STORE="$IMAGE_STORE" OCI_ARCHIVE="$archive" \
    bash .ci/build-image.sh >/dev/null

"$VENV/bin/helm" package deployment/helm/rdma-shared-dp --destination "$DIST" >/dev/null

digest=$(bah inspect --type image --format '{{.FromImageDigest}}' "$IMAGE")
created=$(bah inspect --type image --format '{{.OCIv1.Created.UTC.Format "2006-01-02T15:04:05Z"}}' "$IMAGE")
ctr=$(bah from --pull=false "$IMAGE")
trap 'bah umount "$ctr" >/dev/null 2>&1 || true; bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
root=$(bah mount "$ctr")
site=$(echo "$root"/opt/rdma-shared-dp/lib/python3*/site-packages)
"$VENV/bin/python" .ci/sbom.py --image-name rdma-shared-dp --image-version "$VERSION" \
    --image-digest "$digest" --created "$created" --site-packages "$site" \
    "$root"/opt/rdma-shared-dp/pip-report/*.json >"$DIST/rdma-shared-dp-$VERSION.cdx.json"

(cd "$DIST" && sha256sum "rdma-shared-dp-$VERSION.oci.tar" "rdma-shared-dp-$VERSION.tgz" \
    "rdma-shared-dp-$VERSION.cdx.json" >SHA256SUMS)
ls -l "$DIST"
