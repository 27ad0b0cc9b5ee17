"""The project's base: errors, JSON documents, SQLite, tracing, the ASGI guard, loopback checks; imports nothing else of the project."""
