"""Which donor sends which chunk of a state download: pure bookkeeping, no I/O.

Donors pull work: each asks ``take`` for its next chunk when it has room, so a donor that serves
twice as fast serves about twice as many chunks without anyone guessing its rate in advance. Rates
measured as chunks arrive rank the donors; the ranking decides who goes first and, once every
chunk is handed out, which slow donor's chunk an idle faster donor also fetches (the end game: the
last chunks of a download would otherwise wait on the slowest link). A donor that fails or sends
a chunk that does not match its hash is dropped and every chunk it held goes back to the pool for
the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RATE_SMOOTHING = 0.5  # weight of the newest measurement in a donor's rate


@dataclass
class DonorBook:
    """What the plan knows of one donor."""

    rate: float  # bytes/s, measured (or the prior it started with)
    inflight: set[int] = field(default_factory=set)  # chunks asked of it, not yet answered
    served: int = 0  # chunks it delivered first
    dropped: str = ""  # why it is out, "" while in


class ChunkPlan:
    """Hands out ``n_chunks`` chunks among donors; see the module docstring."""

    def __init__(self, n_chunks: int, donors: list[str], rates: dict[str, float] | None = None):
        if n_chunks < 0 or not donors or len(set(donors)) != len(donors):
            raise ValueError("a plan needs a chunk count >= 0 and distinct donors")
        known = sorted(r for d, r in (rates or {}).items() if d in donors and r > 0)
        prior = known[len(known) // 2] if known else 1.0
        self.books = {d: DonorBook(rate=(rates or {}).get(d, 0.0) or prior) for d in donors}
        self.pending: list[int] = list(range(n_chunks))  # not yet asked of anyone, lowest first
        self.done: dict[int, str] = {}  # chunk -> the donor whose copy was kept
        self.n_chunks = n_chunks
        self.reassigned = 0  # chunks handed back to the pool by a failed or dropped donor
        self.duplicated = 0  # end-game chunks asked of a second donor

    def ranked(self) -> list[str]:
        """Donors still in, fastest first (ties: in the order given)."""
        live = [d for d, b in self.books.items() if not b.dropped]
        return sorted(live, key=lambda d: -self.books[d].rate)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.n_chunks

    @property
    def stuck(self) -> bool:
        """Chunks are missing and no donor is left to send them."""
        return not self.complete and not self.ranked()

    def take(self, donor: str) -> int | None:
        """The next chunk for ``donor`` to send, or None if it has nothing useful to do now."""
        book = self.books[donor]
        if book.dropped or self.complete:
            return None
        if self.pending:
            index = self.pending.pop(0)
            book.inflight.add(index)
            return index
        return self._steal(donor)

    def _steal(self, donor: str) -> int | None:
        """End game: a chunk held only by the donor expected to finish last, if ``donor`` is faster."""
        mine = self.books[donor]
        holders: dict[int, list[str]] = {}
        for d, b in self.books.items():
            for i in b.inflight:
                holders.setdefault(i, []).append(d)
        lone = [(i, ds[0]) for i, ds in holders.items() if len(ds) == 1 and ds[0] != donor]
        if not lone:
            return None
        index, slow = max(lone, key=lambda c: (len(self.books[c[1]].inflight) / self.books[c[1]].rate, -c[0]))
        if self.books[slow].rate >= mine.rate:
            return None
        mine.inflight.add(index)
        self.duplicated += 1
        return index

    def finished(self, donor: str, index: int, nbytes: int, seconds: float) -> bool:
        """``donor`` delivered chunk ``index`` (already verified); True if this copy is the one to
        keep, False if another donor's copy came first."""
        book = self.books[donor]
        book.inflight.discard(index)
        if seconds > 0 and nbytes > 0:
            book.rate = RATE_SMOOTHING * (nbytes / seconds) + (1 - RATE_SMOOTHING) * book.rate
        if index in self.done:
            return False
        self.done[index] = donor
        book.served += 1
        return True

    def failed(self, donor: str, index: int) -> None:
        """``donor`` did not deliver ``index``: it goes back to the pool unless done or held elsewhere."""
        self.books[donor].inflight.discard(index)
        self._release(index)

    def drop(self, donor: str, why: str) -> None:
        """``donor`` is out for the rest of this download; its chunks go to the others."""
        book = self.books[donor]
        if book.dropped:
            return
        book.dropped = why or "dropped"
        held, book.inflight = book.inflight, set()
        for index in sorted(held):
            self._release(index)

    def _release(self, index: int) -> None:
        if index in self.done or index in self.pending:
            return
        if any(index in b.inflight for b in self.books.values()):
            return
        self.pending.append(index)
        self.pending.sort()
        self.reassigned += 1
