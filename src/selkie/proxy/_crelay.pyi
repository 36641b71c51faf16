# The compiled relay (_crelay.c): sessions (scanner, buffers, counters) and the loop.

from collections.abc import Callable

END_CLIENT: int
END_SERVER: int
END_ERROR: int
CHANGE_USER: int
KILL: int
FLUSHED: int

class Session:
    @property
    def bytes_to_client(self) -> int: ...
    @property
    def bytes_from_client(self) -> int: ...
    @property
    def statements(self) -> int: ...
    @property
    def last_active(self) -> float: ...
    @property
    def quit_seen(self) -> bool: ...
    def end_after_sending(self) -> None: ...
    def feed(self, data: bytes, /) -> tuple[list[tuple[int, bytes]], list[int]]: ...

class Loop:
    def add(
        self,
        session: Session,
        client_fd: int,
        server_fd: int,
        to_client: bytes,
        to_server: bytes,
        from_client: bytes,
        handler: Callable[[int, bytes | int | None], None],
        /,
    ) -> None: ...
    def run(self) -> None: ...
