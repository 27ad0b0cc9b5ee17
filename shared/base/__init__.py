"""The project's base: errors, SQLite, tracing, the ASGI guard, loopback checks; imports nothing else of the project."""
