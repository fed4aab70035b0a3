"""The usage-log and trace store: records, tables, the batching writer, queries and migrations.

The proxy needs only this surface:

    store = Store.from_config(config, config_path)   # or Store(settings, secrets=...)
    await store.start()                              # StoreUnavailable if the database is down
    store.submit(RequestRecord(...))                 # once per client request; never blocks
    await store.close()                              # drains on shutdown
"""

from server.store.engine import StoreUnavailable, resolve_url
from server.store.records import STATUS_CLIENT_CLOSED, AttemptRow, RequestRecord, new_request_id
from server.store.scrub import Scrubber, scrub, secrets_from_config
from server.store.writer import Store

__all__ = [
    "STATUS_CLIENT_CLOSED", "AttemptRow", "RequestRecord", "Scrubber", "Store", "StoreUnavailable",
    "new_request_id", "resolve_url", "scrub", "secrets_from_config",
]
