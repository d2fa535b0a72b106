"""What the router and the node agent share: the wire contract between them and the HTTP client
both use to call nodes. Neither side's package is imported from here, so an agent installs and
runs without the router."""
