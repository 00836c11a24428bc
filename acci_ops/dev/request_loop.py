"""A bounded request loop: what proves a traffic switch drops nothing.

``RequestLoop(url).start()`` sends ``total`` GETs at no more than ``rate`` per second from a few threads,
records each answer (start, end, label) and each failure (a refused connection, a timeout, a status other
than 200). The label says who answered: a response header (``header``), or the body (``/version`` of the
release app). The blue/green tests and ``benchmarks/release.py`` run one across every switch.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RequestLoop:
    """``total`` GETs of ``url + path`` at a bounded ``rate`` (requests per second) from ``workers`` threads."""

    url: str
    total: int = 2000
    rate: float = 500.0
    path: str = "/"
    header: str | None = None
    workers: int = 4
    timeout: float = 5.0
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, label)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> RequestLoop:
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def _work(self) -> None:
        while True:
            with self._lock:
                if self.sent >= self.total:
                    return
                index = self.sent
                self.sent += 1
            delay = self._t0 + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + self.path, timeout=self.timeout) as answer:
                    body = answer.read()
                    status = answer.status
                    label = (answer.headers.get(self.header, "") if self.header else
                             body[:64].decode(errors="replace").strip())
            except urllib.error.HTTPError as exc:
                with self._lock:
                    self.failures.append(f"request {index}: status {exc.code}")
                continue
            except (urllib.error.URLError, OSError) as exc:
                with self._lock:
                    self.failures.append(f"request {index}: {exc}")
                continue
            with self._lock:
                if status != 200:
                    self.failures.append(f"request {index}: status {status}")
                self.answers.append((began, time.monotonic(), label))

    def wait_sent(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count and time.monotonic() < deadline:
            time.sleep(0.005)

    def join(self, timeout: float = 60.0) -> RequestLoop:
        for thread in self._threads:
            thread.join(timeout)
        return self

    def stop(self) -> RequestLoop:
        """Send nothing more (the requests under way finish), then wait for the threads."""
        with self._lock:
            self.total = self.sent
        return self.join()

    def labels(self) -> Counter:
        return Counter(label for _, _, label in self.answers)

    def labels_after(self, moment: float) -> set[str]:
        return {label for began, _, label in self.answers if began > moment}
