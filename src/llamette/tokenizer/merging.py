"""What both tokenizers share: the merge loop (repeatedly join the best adjacent pair of symbols) and a
per-piece cache, since words and pieces repeat a lot in real text.

A port of the priority-queue loop in llama.cpp's llm_tokenizer_spm_session / llm_tokenizer_bpe_session:
the pair with the lowest key merges first, the leftmost one on ties; queue entries made stale by an
earlier merge are skipped when popped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

_CACHE_LIMIT = 1 << 16


def encode_pieces(pieces: Iterable[str], cache: dict[str, list[int]], encode: Callable[[str], list[int]]) -> list[int]:
    """Concatenate encode(piece) over pieces, remembering each piece's ids (cache cleared when it grows big)."""
    out: list[int] = []
    for piece in pieces:
        ids = cache.get(piece)
        if ids is None:
            ids = encode(piece)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[piece] = ids
        out.extend(ids)
    return out


def merge_symbols(symbols: list[str], pair_key: Callable[[str, str], float | None]) -> list[str]:
    """Merge adjacent symbols while pair_key(left, right) returns a key (lower merges first)."""
    n = len(symbols)
    if n < 2:
        return symbols
    text = list(symbols)  # text of the symbol starting at each index; "" once merged away
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    heap = []
    for i in range(n - 1):
        key = pair_key(text[i], text[i + 1])
        if key is not None:
            heap.append((key, i, i + 1, text[i] + text[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, joined = heapq.heappop(heap)
        # stale: one side merged away, or grew since this entry was queued
        if not text[left] or not text[right] or text[left] + text[right] != joined:
            continue
        text[left], text[right] = joined, ""
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prev[after] = left
        before = prev[left]
        if before != -1:
            key = pair_key(text[before], joined)
            if key is not None:
                heapq.heappush(heap, (key, before, left, text[before] + joined))
        if after != -1:
            key = pair_key(joined, text[after])
            if key is not None:
                heapq.heappush(heap, (key, left, after, joined + text[after]))
    return [t for t in text if t]
