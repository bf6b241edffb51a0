"""moto's server with DynamoDB made atomic per request, as real DynamoDB is.

moto serves requests on many threads but its DynamoDB backend has no locking: two
concurrent conditional writes can both pass their condition, and a cancelled
TransactWriteItems restores a snapshot of the whole table, undoing other requests'
writes made meanwhile. Our invariants (credits never below zero, one rotation per key,
idempotency) are conditional writes and transactions, and the contract tests check them
under concurrency, so the emulator must serialise DynamoDB operations. SQS and Secrets
Manager stay concurrent (long polls must not block other calls).

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT   (same flags as moto_server)
"""

import functools
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_LOCK = threading.RLock()

for _name in [
    "put_item",
    "get_item",
    "query",
    "scan",
    "update_item",
    "delete_item",
    "transact_write_items",
    "transact_get_items",
    "batch_get_item",
    "batch_write_item",
]:
    _orig = getattr(DynamoDBBackend, _name)

    @functools.wraps(_orig)
    def _serialised(self, *args, __orig=_orig, **kwargs):
        with _LOCK:
            return __orig(self, *args, **kwargs)

    setattr(DynamoDBBackend, _name, _serialised)

# The request handlers too: `UpdateItem` reads the old item before the update and turns the
# stored item into its answer (`ReturnValues`) after it, outside the backend call; under
# concurrency two updates could answer the same value. One lock (re-entrant) over the whole
# request makes each answer the item exactly as its own update left it, as DynamoDB does.
from moto.dynamodb.responses import DynamoHandler  # noqa: E402

for _name in ["put_item", "update_item", "delete_item"]:
    _orig = getattr(DynamoHandler, _name)

    @functools.wraps(_orig)
    def _serialised_handler(self, *args, __orig=_orig, **kwargs):
        with _LOCK:
            return __orig(self, *args, **kwargs)

    setattr(DynamoHandler, _name, _serialised_handler)

if __name__ == "__main__":
    main()
