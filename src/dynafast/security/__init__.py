"""Who may talk to a node, and how: the cluster secret, users and roles, TLS."""
