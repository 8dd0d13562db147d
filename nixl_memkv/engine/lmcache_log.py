"""What an LMCache multi-process server did, read from its log: the lines
it writes for every store, retrieve and L1+L2 prefetch (the product
documents quote them). LMCache has no per-request API for these; its log
is what its users read too."""

from __future__ import annotations

import dataclasses
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STORED = re.compile(r"Stored (\d+) tokens in ([0-9.]+) seconds")
_RETRIEVED = re.compile(r"Retrieved (\d+) tokens in ([0-9.]+) seconds")
_PREFETCH = re.compile(r"Prefetch request completed \(L1\+L2\): (\d+)/(\d+) retained keys \((\d+) L1, (\d+) L2\)"
                       r" in ([0-9.]+) ms")


@dataclasses.dataclass(frozen=True)
class Prefetch:
    hits: int
    requested: int
    l1: int
    l2: int
    ms: float  # submitted → every chunk in LMCache's L1 (what the L2 tier costs)


@dataclasses.dataclass
class LMCacheActivity:
    stored_tokens: list[int]
    retrieved_tokens: list[int]
    prefetches: list[Prefetch]

    @property
    def l2_chunks(self) -> int:
        return sum(p.l2 for p in self.prefetches)


def clean_lines(log_text: str) -> list[str]:
    return [_ANSI.sub("", line) for line in log_text.splitlines()]


def activity(log_text: str) -> LMCacheActivity:
    lines = clean_lines(log_text)
    found = LMCacheActivity([], [], [])
    for line in lines:
        if m := _STORED.search(line):
            found.stored_tokens.append(int(m.group(1)))
        elif m := _RETRIEVED.search(line):
            found.retrieved_tokens.append(int(m.group(1)))
        elif m := _PREFETCH.search(line):
            found.prefetches.append(Prefetch(*(int(g) for g in m.groups()[:4]), float(m.group(5))))
    return found


_ADAPTER_CLOSED = re.compile(r"MemKVL2Adapter closed \(([^)]*)\)")


def adapter_counters(log_text: str) -> dict[str, int] | None:
    """The counters our MemKVL2Adapter logs when its server stops (the last
    such line), or None if it has not stopped."""
    found = None
    for line in clean_lines(log_text):
        if m := _ADAPTER_CLOSED.search(line):
            found = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split(", ") if "=" in kv)}
    return found
