"""The edge daemon's HTTP APIs: the app, /v1/query, /v1/chat/completions and /v1/responses with its store.

``app`` assembles them; ``query``, ``chat`` and ``responses`` are the routers; ``resolve`` turns what
OpenAI's APIs ask into one request; ``sse`` writes every stream; ``errors`` holds the error bodies;
``response_objects``, ``response_keeper`` and ``response_store`` make, run and keep Responses.
"""
