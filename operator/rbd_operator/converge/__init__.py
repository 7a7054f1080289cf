"""observe (adapters) -> plan (reconcile) -> apply (adapters), one module per kind: image.py, storage.py,
host.py, snapshot.py. Each returns a typed Outcome (conditions, events, status fields; outcome.py) or
raises an OperatorError with its reason; the handlers turn either into status (handlers/*.py are kopf
wiring only). Blocking libraries run in bounded worker pools with their own timeouts
(adapters/blocking.py); the functions that run in a worker thread are plain functions taking a
connection (`cluster`, `ssh`), the ones that orchestrate are async.
"""
