"""The MySQL client/server protocol as Selkie speaks it, both ways: wire primitives, packet
parsing and building (pure functions), and packet framing over asyncio streams. Used by the
proxy (server side to clients, client side to computes) and the safekeeper (a replica's
client side)."""
