"""OCI image layouts built by the tests themselves, for `skopeo copy oci:DIR:TAG ...`.

Each image is a one-file layer (a tar.gz written here), its config and its manifest; a
multi-platform image adds an index over one manifest per platform. `seed` changes the
file's content, and with it every digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

__all__ = ["INDEX", "MANIFEST", "oci_layout"]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
_CONFIG = "application/vnd.oci.image.config.v1+json"
_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _layer(content: bytes) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    # mtime=0: the same content always gives the same digest.
    return gzip.compress(tar_bytes, mtime=0), f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"


def _image(layout: Path, seed: str, os: str, arch: str) -> dict[str, Any]:
    layer, diff_id = _layer(f"{seed} {os}/{arch}\n".encode())
    config = json.dumps(
        {
            "architecture": arch,
            "os": os,
            "config": {"Cmd": ["/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _blob(layout, config, _CONFIG),
            "layers": [_blob(layout, layer, _LAYER)],
        }
    ).encode()
    return {**_blob(layout, manifest, MANIFEST), "platform": {"os": os, "architecture": arch}}


def oci_layout(
    layout: Path, tag: str, *, seed: str, platforms: tuple[str, ...] = ("linux/amd64",)
) -> str:
    """Write an image layout at `layout` holding one image under `tag`; return its digest
    (the manifest's for one platform, the index's for several)."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    images = [_image(layout, seed, *p.split("/", 1)) for p in platforms]
    if len(images) == 1:
        top = {k: v for k, v in images[0].items() if k != "platform"}
    else:
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": images}).encode()
        top = _blob(layout, index, INDEX)
    annotated = {**top, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [annotated]}))
    digest: str = top["digest"]
    return digest
