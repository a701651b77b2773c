"""HTTP hardening in front of the OpenAI routes: what a request must pass before any handler parses it
(body size, JSON nesting depth, lone UTF-16 surrogates) and OpenAI error objects for requests that
uvicorn cannot parse. Nothing here knows the OpenAI API beyond its error shape."""
