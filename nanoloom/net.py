"""The network check of the Hugging Face hub readers (model/hf.py, data/corpora.py)."""

from __future__ import annotations

import socket


def resolves(host: str) -> bool:
    """True when host has a DNS entry: a fast, side-effect-free test for "is there a network"."""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True
