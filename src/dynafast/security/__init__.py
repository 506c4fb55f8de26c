"""Security: TLS contexts and development certificates (and, beside them, authentication)."""
