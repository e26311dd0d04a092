"""Token-aware chunking of a document with the model's own tokenizer.

A chunk is a window of at most ``window`` tokens of the document (the model's max sequence length minus
its special tokens), so the model sees every chunk whole. Consecutive chunks share about ``overlap`` tokens.
Cuts fall between words wherever a word boundary lies inside the window (a cut inside a word would make
the chunk's own tokenization differ from the document's); a single word longer than the window is cut
where the window ends. Each chunk's character offsets come from the fast tokenizer's offset mapping, so
``document[char_start:char_end]`` IS the chunk's text, exactly.
"""

from __future__ import annotations

from typing import Any

from serve_app.db.documents import ChunkSpan


def chunk_document(tokenizer: Any, text: str, window: int, overlap: int) -> list[ChunkSpan]:
    """``text`` cut into chunks of at most ``window`` tokens overlapping by about ``overlap`` tokens.

    ``tokenizer``: a ``tokenizers.Tokenizer`` without truncation. Text with no tokens gives no chunks.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window; got window={window}, overlap={overlap}")
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets: list[tuple[int, int]] = encoding.offsets
    words: list[int | None] = encoding.word_ids
    n = len(offsets)
    # A cut may fall before token i when token i begins a word.
    word_start = [i == 0 or words[i] is None or words[i] != words[i - 1] for i in range(n)]
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = min(start + window, n)
        if end < n:
            cut = end
            while cut > start and not word_start[cut]:
                cut -= 1
            end = cut if cut > start else end  # one word longer than the window: cut inside it
        spans.append((start, end))
        if end >= n:
            break
        start = _next_start(word_start, start, end, overlap)
    return [ChunkSpan(index=i, char_start=offsets[s][0], char_end=offsets[e - 1][1],
                      text=text[offsets[s][0]:offsets[e - 1][1]]) for i, (s, e) in enumerate(spans)]


def _next_start(word_start: list[bool], start: int, end: int, overlap: int) -> int:
    """Where the chunk after [start, end) begins: ``overlap`` tokens before ``end``, moved back to the start
    of its word (at most ``overlap`` tokens more overlap) or, when no word starts there, forward to the next
    one (less overlap). Always after ``start``, so chunking ends."""
    target = max(end - overlap, start + 1)
    for i in range(target, max(start, target - overlap - 1), -1):
        if word_start[i]:
            return i
    for i in range(target, end + 1):
        if i == end or word_start[i]:
            return i
    return end
