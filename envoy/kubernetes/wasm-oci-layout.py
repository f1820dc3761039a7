#!/usr/bin/env python3
"""Writes the filter as an OCI image layout (`make oci`), without a container engine.

The image is the "compat" Wasm variant that both Istio's and Envoy Gateway's image fetchers
read (pkg/wasm/imagefetcher.go in each): one layer of media type
application/vnd.oci.image.layer.v1.tar+gzip holding `plugin.wasm`. Their other accepted
variant, custom wasm media types, needs exactly two layers; a single
application/vnd.module.wasm.content.layer.v1+wasm layer is refused by both. The output is
reproducible (fixed timestamps, owners and gzip header), so the manifest digest, which Istio's
`sha256` and Envoy Gateway's `sha256` check, depends on the module only.

usage: wasm-oci-layout.py MODULE.wasm OUT_DIR TAG
"""
import gzip, hashlib, io, json, os, sys, tarfile

def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}

def main():
    module, out, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    wasm = open(module, "rb").read()
    if wasm[:4] != b"\0asm":
        sys.exit(f"{module} is not a wasm module")
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o444, 0
        t.addfile(info, io.BytesIO(wasm))
    diff_id = "sha256:" + hashlib.sha256(tar_bytes.getvalue()).hexdigest()
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "wasm", "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "config": {},
    }, sort_keys=True, separators=(",", ":")).encode()
    if os.path.exists(out):
        for root, dirs, files in os.walk(out, topdown=False):
            for n in files: os.remove(os.path.join(root, n))
            for n in dirs: os.rmdir(os.path.join(root, n))
    os.makedirs(out, exist_ok=True)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(out, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(out, layer),
                    "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}],
    }
    m = blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(f"{out}: {tag} manifest {m['digest']} (Istio/Envoy Gateway sha256: {m['digest'][7:]})")

main()
