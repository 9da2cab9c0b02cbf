"""What this CPU computes in hardware, read from ``/proc/cpuinfo`` (elsewhere: nothing known).

The reader's ``auto`` runtime (:func:`qa.onnx_backend.resolve_runtime`) and ``train-reader
--bf16`` ask it: bf16 matrix products are several times faster than fp32 on CPUs with AMX
and several times slower on CPUs that only emulate bf16 (the README's runtime table).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


@lru_cache(maxsize=4)
def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU listed; empty where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    m = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return frozenset(m.group(1).split()) if m else frozenset()


def has_amx_bf16(cpuinfo: str = CPUINFO) -> bool:
    """AMX tiles for bf16 (Intel Sapphire Rapids and later): where bf16 inference pays."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def has_bf16(cpuinfo: str = CPUINFO) -> bool:
    """Any bf16 arithmetic in hardware (AMX or AVX-512 BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags(cpuinfo))
