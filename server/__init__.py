"""The gateway's HTTP side: the ASGI app, the live driver, the store, metrics and the admin API."""

# axonsim first: its import settles which build of the compiled modules runs, and some of those
# live in this package (axonsim/native.py).
import axonsim  # noqa: F401
