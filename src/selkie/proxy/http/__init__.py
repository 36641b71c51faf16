"""SQL over HTTP: PlanetScale's database-js protocol in front of the same endpoints, roles and
passwords as the MySQL proxy (docs/http.md)."""
