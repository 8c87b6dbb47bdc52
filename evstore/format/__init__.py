"""The log format's pure functions: encoding a commit into its bytes (no I/O)."""
