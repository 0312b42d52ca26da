"""The `barnraise` command line."""
