"""`chromify serve`: the HTTP API and the web page. Only `chromify.api.app` imports FastAPI."""
