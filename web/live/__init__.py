"""web/live."""
