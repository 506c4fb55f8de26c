"""Who may talk to a node, and what they may do."""
