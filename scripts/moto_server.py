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

if __name__ == "__main__":
    main()
