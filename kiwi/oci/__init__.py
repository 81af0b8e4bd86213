"""OCI images in and out: references, the Distribution v2 client, layers, export.

reference.py  parse `alpine:3.20`, `ghcr.io/o/i@sha256:...`, `localhost:5000/x`
registry.py   Distribution API v2 over urllib: tokens, basic auth, limits, redirects
blobs.py      digest-addressed blob cache in the data folder (resumable, verified)
layers.py     layers applied in order through kiwi's extractor, with whiteouts
pull.py       `kiwi pull <ref>` and `kiwi import` of OCI layouts / docker save
export.py     `kiwi export --format oci` and `kiwi push`
config.py     the image config (Env, WorkingDir, Entrypoint, Cmd) at attach time
"""
