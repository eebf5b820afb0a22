"""Turning a stream of token ids into text that is safe to print, with stop strings.

Two things make this more than `decode(ids)` per token:
- A byte-level token can hold half of a UTF-8 character; decoded alone it shows as U+FFFD. Tokens are
  therefore decoded in a small window that is only committed once it decodes without a trailing U+FFFD
  (or grows past `MAX_PENDING` tokens: then the bytes really are invalid and are shown as they are). Each
  committed window starts on a character boundary, so committed pieces concatenate to the full decode,
  and the cost per token stays constant instead of decoding the whole text again.
- A stop string may arrive over several tokens. Text that could be the beginning of a stop string is
  held back from the reader until the next tokens show whether it is one.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    """One row's generated text. `push` ids in, `take` printable pieces out, `text` at the end."""

    MAX_PENDING = 8  # a UTF-8 character is at most 4 bytes, so 8 tokens that still end badly are invalid

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self.committed = 0  # ids already decoded into `text`
        self.text = ""
        self.emitted = 0  # characters of `text` already handed out by `take`
        self.finished = False

    def push(self, token: int) -> None:
        assert not self.finished, "push after the stream finished"
        self.ids.append(token)
        piece = self.tokenizer.decode(self.ids[self.committed :])
        if piece.endswith(REPLACEMENT) and len(self.ids) - self.committed < self.MAX_PENDING:
            return  # probably a character cut between tokens: wait for its remaining bytes
        self._commit(piece)

    def end(self) -> None:
        """No more tokens: commit whatever is pending (even if it is not valid UTF-8)."""
        if not self.finished and self.committed < len(self.ids):
            self._commit(self.tokenizer.decode(self.ids[self.committed :]))
        self.finished = True

    def take(self) -> str:
        """The text that became printable since the last call ('' if none)."""
        end = len(self.text) if self.finished else self._safe_end()
        if end <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted : end], end
        return piece

    def _commit(self, piece: str) -> None:
        self.committed = len(self.ids)
        before = len(self.text)
        self.text += piece
        if not self.stop:
            return
        # A stop string completed by this piece starts at most longest_stop - 1 characters before it.
        origin = max(0, before - self.longest_stop + 1)
        hits = [i for s in self.stop if (i := self.text.find(s, origin)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.finished = True

    def _safe_end(self) -> int:
        """End of the text that cannot be part of a stop string: drop the longest tail that is a prefix
        of some stop string (anything before it, if it were a stop, would have been found whole)."""
        for k in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return len(self.text) - k
        return len(self.text)
