"""Applications built on sessions: the coding assistant (``megacontext code``)."""
