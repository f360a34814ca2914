"""Whether a round's message is in: a round starts before its message is stored, and says nothing
until it is.

The driver starts a round the moment it holds the conversation's lease (driver.py), while the
user's message is still being stored and its MessageAccepted written: the round's inputs are asked
for and its first speaker starts generating meanwhile, which takes the store off the way to the
first token. Everything the round writes (its events, its turn markers) waits for the acceptance,
so the log keeps its order: MessageAccepted, then the answers. A message that is not accepted (its
store failed, or a retry of it was accepted first) had no round: the round stops where it is, its
generation cut, its holds released, nothing written and nothing billed; and its poster hears so
only once the round has let go of the lease, so that a retry finds the conversation free.
"""

from __future__ import annotations

import asyncio
import contextlib


class NotAccepted(Exception):
    """The round's message was not accepted: the round writes nothing and bills nothing."""


class Acceptance:
    """The acceptance of one round's message, decided once by whoever stores it."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future
        self._round_over = asyncio.Event()

    @classmethod
    def pending(cls) -> Acceptance:
        return cls(asyncio.get_running_loop().create_future())

    @classmethod
    def given(cls) -> Acceptance:
        """A message accepted before its round started (a queued message's, a resumed round's)."""
        acceptance = cls.pending()
        acceptance.accept()
        return acceptance

    def accept(self) -> None:
        if not self._future.done():
            self._future.set_result(None)

    def refuse(self, reason: str) -> None:
        if not self._future.done():
            self._future.set_exception(NotAccepted(reason))
            # Read once here: a round that ended before it asked must not log it as unretrieved.
            self._future.exception()

    @property
    def accepted(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled() and future.exception() is None

    def round_over(self) -> None:
        """The round is over and its driver let go of the lease (or handed it on)."""
        self._round_over.set()

    async def until_round_over(self, seconds: float) -> None:
        """Wait, at most `seconds`, until `round_over`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._round_over.wait(), seconds)

    async def wait(self) -> None:
        """Return once the message is accepted; NotAccepted if it is not."""
        if self._future.done():
            self._future.result()
            return
        # Shielded: a waiter cancelled (its turn stopped) must not cancel the decision itself.
        await asyncio.shield(self._future)
