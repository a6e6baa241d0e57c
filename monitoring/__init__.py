"""Operational plumbing shared by wharf-broker and wharf-balancer.

Metrics registries, the admin HTTP listener, structured logs, sd_notify, strict TOML config
loading and the daemon lifecycle (serve, reload on SIGHUP, drain on SIGTERM). Imports only
:mod:`proto` and third-party libraries, never a daemon package.
"""
