"""A CycloneDX 1.6 SBOM (JSON) of the Python packages in the image (run by .ci/release.sh).

Input: the installation reports pip wrote while building the image (/opt/rdma-shared-dp/
pip-report/*.json: each installed distribution's name, version, wheel SHA-256 and metadata) and
the image's site-packages, which says what is still installed (the build backend is removed
after use). Output on stdout; the same inputs give the same bytes (the serial number and time
come from the image, not the clock).

    python .ci/sbom.py --image-name rdma-shared-dp --image-version 0.1.0 \\
        --image-digest sha256:... --created 2026-12-08T00:00:00Z \\
        --site-packages ROOT/opt/rdma-shared-dp/lib/python3.13/site-packages REPORT.json...
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def canonical(name: str) -> str:
    """PEP 503 name: the form purls and dist-info comparisons use."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(site_packages: Path) -> set[str]:
    names = set()
    for dist_info in site_packages.glob("*.dist-info"):
        name, _, _ = dist_info.name.removesuffix(".dist-info").rpartition("-")
        names.add(canonical(name))
    return names


def licenses(metadata: Json) -> list[Json]:
    if metadata.get("license_expression"):
        return [{"expression": metadata["license_expression"]}]
    text = str(metadata.get("license") or "").strip()
    if text and "\n" not in text and len(text) < 100:
        return [{"license": {"name": text}}]
    classifiers = [c for c in metadata.get("classifier", []) if c.startswith("License ::")]
    return [{"license": {"name": c.rsplit(" :: ", 1)[1]}} for c in classifiers]


def component(item: Json) -> Json:
    metadata = item["metadata"]
    name, version = canonical(metadata["name"]), metadata["version"]
    purl = f"pkg:pypi/{name}@{version}"
    out: Json = {"type": "library", "bom-ref": purl, "name": name, "version": version,
                 "purl": purl}  # fmt: skip
    digest = item.get("download_info", {}).get("archive_info", {}).get("hashes", {}).get("sha256")
    if digest:
        out["hashes"] = [{"alg": "SHA-256", "content": digest}]
    found = licenses(metadata)
    if found:
        out["licenses"] = found
    return out


def requires(metadata: Json, present: set[str]) -> list[str]:
    """The installed distributions this one depends on (markers not evaluated: presence decides)."""
    names = set()
    for spec in metadata.get("requires_dist", []):
        if "extra ==" in spec:
            continue
        names.add(canonical(re.split(r"[\s;<>=!~\[(]", spec, maxsplit=1)[0]))
    return sorted(names & present)


def sbom(args: argparse.Namespace) -> Json:
    present = installed(args.site_packages)
    items = [i for r in args.reports for i in json.loads(Path(r).read_text())["install"]]
    items = [i for i in items if canonical(i["metadata"]["name"]) in present]
    if not items:
        raise SystemExit("sbom: no installed distribution found in the reports")
    components = sorted((component(i) for i in items), key=lambda c: str(c["name"]))
    versions = {c["name"]: c["version"] for c in components}
    image_ref = f"pkg:oci/{args.image_name}@{args.image_digest.replace(':', '%3A')}"
    dependencies = [
        {"ref": f"pkg:pypi/{canonical(i['metadata']['name'])}@{i['metadata']['version']}",
         "dependsOn": [f"pkg:pypi/{n}@{versions[n]}" for n in requires(i["metadata"], present)]}
        for i in sorted(items, key=lambda i: canonical(i["metadata"]["name"]))
    ]  # fmt: skip
    dependencies.append({"ref": image_ref, "dependsOn": [c["bom-ref"] for c in components]})
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, image_ref)}",
        "version": 1,
        "metadata": {
            "timestamp": args.created,
            "tools": {
                "components": [{"type": "application", "name": "rdma-shared-dp .ci/sbom.py"}]
            },
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": args.image_name,
                "version": args.image_version,
            },
        },
        "components": components,
        "dependencies": dependencies,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image-name", required=True)
    parser.add_argument("--image-version", required=True)
    parser.add_argument("--image-digest", required=True)
    parser.add_argument("--created", required=True, help="the image's creation time (ISO 8601)")
    parser.add_argument("--site-packages", type=Path, required=True)
    parser.add_argument("reports", nargs="+")
    json.dump(sbom(parser.parse_args(argv)), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
