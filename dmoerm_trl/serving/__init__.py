"""Serving: a generic dynamic batcher (:mod:`.batching`) and the ``dmoerm serve`` reward-model HTTP server.

Importing this package loads nothing heavy: :mod:`dmoerm_trl.serving.batching` needs only the standard library, the
server modules import FastAPI/uvicorn (the ``[serve]`` extra) when they are used.
"""
