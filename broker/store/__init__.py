"""Durable storage for the broker, behind one interface (:mod:`broker.store.base`).

:mod:`broker.store.sqlite` is the embedded default; nothing above the interface knows which
implementation runs.
"""
