"""Regenerate the ``serveConfigV2`` blocks of the KubeRay RayService manifests from the Serve configs.

serve_config.yaml (CPU profile) and cluster/serve_config.gpu.yaml (GPU profile) are the sources of
truth; the manifests embed them verbatim (comments included) as KubeRay wants a string. One change
is made on the way: the CPU profile's ``http_options.host`` becomes ``0.0.0.0``, because inside a pod
the proxy must listen on the pod's interface, not on loopback.

    python scripts/sync_kuberay.py           # rewrite the manifests
    python scripts/sync_kuberay.py --check   # exit 1 when a manifest is stale (CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POD_HOST = "0.0.0.0"
BLOCK_INDENT = "    "  # serveConfigV2 sits under spec:, so its block content is indented 4 spaces


@dataclass(frozen=True)
class Pair:
    manifest: Path
    serve_config: Path


PAIRS = (
    Pair(ROOT / "cluster/kuberay/rayservice.yaml", ROOT / "serve_config.yaml"),
    Pair(ROOT / "cluster/kuberay/rayservice-gpu.yaml", ROOT / "cluster/serve_config.gpu.yaml"),
)

_HOST_LINE = re.compile(r"^(\s+host:\s*)(\S+)(.*)$", re.MULTILINE)
_BLOCK = re.compile(r"^(  serveConfigV2: \|\n)((?:    .*\n|\s*\n)*)", re.MULTILINE)


def serve_config_v2(serve_config: Path) -> str:
    """The text the manifest embeds: the Serve config with the proxy host set to 0.0.0.0."""
    text = serve_config.read_text()
    text = _HOST_LINE.sub(lambda m: f"{m.group(1)}{POD_HOST}{m.group(3)}", text, count=1)
    return text


def render(pair: Pair) -> str:
    manifest = pair.manifest.read_text()
    body = "".join(f"{BLOCK_INDENT}{line}\n" if line.strip() else "\n"
                   for line in serve_config_v2(pair.serve_config).rstrip("\n").split("\n"))
    rendered, count = _BLOCK.subn(lambda m: m.group(1) + body, manifest, count=1)
    if count != 1:
        raise ValueError(f"{pair.manifest}: no '  serveConfigV2: |' block under spec")
    return rendered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report stale manifests instead of rewriting them")
    args = parser.parse_args(argv)
    stale = []
    for pair in PAIRS:
        rendered = render(pair)
        if rendered != pair.manifest.read_text():
            stale.append(pair.manifest)
            if not args.check:
                pair.manifest.write_text(rendered)
    for path in stale:
        print(f"{'stale' if args.check else 'updated'}: {path.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
