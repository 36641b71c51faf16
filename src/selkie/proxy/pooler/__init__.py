"""The pooler: client sessions that borrow compute connections from their endpoint's pool."""
