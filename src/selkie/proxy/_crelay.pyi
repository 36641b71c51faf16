# The compiled relay (_crelay.c): one session's scanner, buffers and counters.

END_CLIENT: int
END_SERVER: int
END_ERROR: int
CHANGE_USER: int

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
    def run(
        self,
        client_fd: int,
        server_fd: int,
        to_client: bytes,
        to_server: bytes,
        from_client: bytes,
        /,
    ) -> tuple[int, bytes | int | None]: ...
    def feed(self, data: bytes, /) -> tuple[list[tuple[int, bytes]], list[int]]: ...
