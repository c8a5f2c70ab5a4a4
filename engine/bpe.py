"""CLIP's byte-level BPE building block, shared by the scripts that write tokenizer files."""

from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))
