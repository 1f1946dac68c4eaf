"""The OpenAI cloud fake on its own event loop and thread: for benches under load and for synchronous tests."""

from __future__ import annotations

import asyncio
import logging
import threading

from tests.fakes.common import FakeReply
from tests.fakes.openai_fake import OpenAIFake


class FakeThread:
    """The cloud fake on its own event loop and thread, so the clients' load does not slow it."""

    def __init__(self, default: FakeReply | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = OpenAIFake()
        self.fake.default = default or FakeReply(text="Hello from the cloud, a few words at a time.", chunk_delay=0.005)
        self._thread = threading.Thread(target=self.loop.run_forever, name="cloud-fake", daemon=True)

    def __enter__(self) -> OpenAIFake:
        # the daemon closes an upstream stream once it has read [DONE]; the fake's server then logs a
        # traceback for the final chunk it could not write, which is noise here
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(10)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
