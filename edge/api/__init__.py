"""The edge daemon's HTTP APIs: the app, /v1/query, /v1/chat/completions and /v1/responses with its store."""
