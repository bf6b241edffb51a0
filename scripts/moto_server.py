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

# TransactWriteItems: moto snapshots the WHOLE table (a deepcopy, once per item that names
# it) before every transaction so that it can roll a cancelled one back. That is O(table)
# time and memory per transaction: a 1,000-message load made moto grow to ~20 GB and be
# OOM-killed (BENCHMARKS.md). The transaction runs under the lock above, so only its own
# items can change while it runs: snapshot those (before), skip the table copy, and put
# them back if it fails.
import copy as _copy  # noqa: E402

import moto.dynamodb.models as _models  # noqa: E402
from moto.dynamodb.models.dynamo_type import DynamoType  # noqa: E402
from moto.dynamodb.models.table import Table  # noqa: E402


class _NoTableCopy:
    """`copy` for moto's DynamoDB module: a table is not copied (see below)."""

    @staticmethod
    def deepcopy(value, *args, **kwargs):
        if isinstance(value, Table):
            return value
        return _copy.deepcopy(value, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(_copy, name)


_models.copy = _NoTableCopy()


def _touched(backend, transact_items):
    """(table, hash key, range key or None) of every item the transaction names."""
    keys = []
    for entry in transact_items:
        for op_type, op in entry.items():
            table = backend.tables.get(op.get("TableName"))
            if table is None:
                continue
            attrs = op.get("Item") if op_type == "Put" else op.get("Key")
            if not attrs or table.hash_key_attr not in attrs:
                continue
            hash_key = DynamoType(attrs[table.hash_key_attr])
            range_key = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in attrs:
                    continue
                range_key = DynamoType(attrs[table.range_key_attr])
            keys.append((table, hash_key, range_key))
    return keys


def _stored(table, hash_key, range_key):
    if range_key is None:
        return table.items.get(hash_key)
    return table.items.get(hash_key, {}).get(range_key)


def _restore(table, hash_key, range_key, item):
    if range_key is None:
        if item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
        return
    if item is None:
        table.items.get(hash_key, {}).pop(range_key, None)
    else:
        table.items[hash_key][range_key] = item


_orig_transact = DynamoDBBackend.transact_write_items


@functools.wraps(_orig_transact)
def _transact_with_item_snapshots(self, transact_items, *args, **kwargs):
    with _LOCK:
        before = [
            (t, h, r, _copy.deepcopy(_stored(t, h, r)))
            for t, h, r in _touched(self, transact_items)
        ]
        try:
            return _orig_transact(self, transact_items, *args, **kwargs)
        except BaseException:
            for t, h, r, item in reversed(before):
                _restore(t, h, r, item)
            raise


DynamoDBBackend.transact_write_items = _transact_with_item_snapshots

if __name__ == "__main__":
    main()
