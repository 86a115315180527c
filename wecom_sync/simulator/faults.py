"""Fault injection for the WeCom simulator: errcodes, HTTP errors, delays, token loss, broken pagination."""

from __future__ import annotations

import threading
from dataclasses import dataclass

API_PREFIX = "/cgi-bin/"
GETTOKEN_PATH = "/cgi-bin/gettoken"


def api_path(path: str | None) -> str | None:
    """Return the canonical ``/cgi-bin/...`` form of an API path ("user/get" and "/cgi-bin/user/get" alike)."""
    if path is None:
        return None
    path = path.split("?", 1)[0].strip()
    if path.startswith(API_PREFIX):
        return path
    return API_PREFIX + path.lstrip("/")


@dataclass(slots=True)
class _Pending:
    kind: str  # "errcode" or "http"
    value: int
    remaining: int
    path: str | None


class Faults:
    """The faults a WeComSimulator applies to the next requests; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._delays: dict[str | None, float] = {}
        self.tokens_generation = 0
        self.tokens_expired_generation = 0
        self.pagination = ""  # "", "error" or "silent"
        self.contact_detail_forbidden = False

    def fail_next(self, errcode: int, count: int = 1, path: str | None = None) -> None:
        """Answer the next ``count`` calls (to ``path``, or to any API but gettoken) with ``errcode``."""
        with self._lock:
            self._pending.append(_Pending("errcode", int(errcode), int(count), api_path(path)))

    def http_error_next(self, status: int = 502, count: int = 1, path: str | None = None) -> None:
        """Answer the next ``count`` calls (to ``path``, or to any API but gettoken) with an HTTP error."""
        with self._lock:
            self._pending.append(_Pending("http", int(status), int(count), api_path(path)))

    def delay(self, seconds: float, path: str | None = None) -> None:
        """Sleep ``seconds`` before answering each call to ``path`` (or every call) until cleared."""
        with self._lock:
            if seconds <= 0:
                self._delays.pop(api_path(path), None)
            else:
                self._delays[api_path(path)] = float(seconds)

    def invalidate_tokens(self) -> None:
        """Make every access token issued so far invalid (errcode 40014), as an early revocation does."""
        with self._lock:
            self.tokens_generation += 1

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (errcode 42001)."""
        with self._lock:
            self.tokens_expired_generation += 1

    def truncate_pagination(self, silent: bool = False) -> None:
        """Break user/list_id after its first page: the next page fails with errcode 40058, or with
        ``silent=True`` the first page claims to be the last (an empty next_cursor)."""
        with self._lock:
            self.pagination = "silent" if silent else "error"

    def forbid_contact_detail(self, forbidden: bool = True) -> None:
        """Refuse detail APIs to the contact-sync secret with 48009, as for a newly added IP since 2022-08-15."""
        with self._lock:
            self.contact_detail_forbidden = bool(forbidden)

    def clear(self) -> None:
        """Remove every fault (issued tokens stay as they are)."""
        with self._lock:
            self._pending.clear()
            self._delays.clear()
            self.pagination = ""
            self.contact_detail_forbidden = False

    # -- used by the server -------------------------------------------------------------------------
    def take(self, path: str) -> tuple[str, int] | None:
        """Consume and return the first pending fault that applies to a call to ``path``."""
        with self._lock:
            for pending in self._pending:
                if pending.path == path or (pending.path is None and path != GETTOKEN_PATH):
                    pending.remaining -= 1
                    if pending.remaining <= 0:
                        self._pending.remove(pending)
                    return pending.kind, pending.value
        return None

    def delay_for(self, path: str) -> float:
        """Return the delay to apply to a call to ``path``."""
        with self._lock:
            return self._delays.get(path, self._delays.get(None, 0.0))
