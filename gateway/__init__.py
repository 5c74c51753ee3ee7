"""perpdex gateway: everything between the engine and the outside world (files, sockets, CLI)."""
