"""Kiwi: a small Linux container runtime."""

__version__ = "0.1.0"


def version_text() -> str:
    """'kiwi 0.1.0 (commit c9c6e4a, built 2026-12-01T19:05Z, linux-amd64)'; a source checkout
    says so. Here, not in cli.py: the start records it and the quick attach compares it."""
    import os

    # build.sh writes build-info into the frozen bundle beside the kiwi package:
    # "commit <hash>, built <UTC time>, linux-<arch>".
    try:
        with open(os.path.join(os.path.dirname(__file__), "build-info"), encoding="utf-8") as f:
            built = f.read().strip()
    except OSError:
        built = f"source checkout, {os.uname().machine}"
    return f"kiwi {__version__} ({built})"
