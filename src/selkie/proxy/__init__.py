"""The MySQL-protocol proxy: auth before wake, routing, relay and pooling."""
