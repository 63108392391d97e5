"""Host health: what a node's own tools say about its GPUs, links and fabric (`findings`), stdlib only."""
