"""What a client's user name (or TLS server name) routes to, before anything is asked of
the control plane."""

from __future__ import annotations

from selkie.proxy.handshake import Route, route


def test_routes_name_an_endpoint_or_a_branch_read_pool() -> None:
    assert route("ep-a-1.owner", None, "x.io") == Route("ep-a-1", "owner", False)
    assert route("ep-a-1-pooler.owner", None, "x.io") == Route("ep-a-1", "owner", True)
    assert route("br-b-2-ro.owner", None, "x.io") == Route("", "owner", False, read_pool="br-b-2")
    assert route("br-b-2-ro-pooler.owner", None, "x.io") == Route(
        "", "owner", True, read_pool="br-b-2"
    )
    assert route("owner", "br-b-2-ro.x.io", "x.io") == Route("", "owner", False, read_pool="br-b-2")
    # A branch is reached through its read pool only; "-ro" alone names nothing.
    assert route("br-b-2.owner", None, "x.io") is None
    assert route("br-ro.owner", None, "x.io") is None
    assert route("owner", None, "x.io") is None
