"""What the router and the node agent share: the wire contract between them, the HTTP client
both use to call nodes, the reading of answers and the fingerprint of prompts. Neither side's
package is imported from here, so an agent installs and runs without the router."""
