"""The schema of balancer.toml. Decoded by :mod:`monitoring.configfile`; strict and frozen."""

from __future__ import annotations

from monitoring.settings import AdminSettings, LifecycleSettings, LoggingSettings, Section

DEFAULT_ADMIN_PORT = 9326


class BalancerConfig(Section, frozen=True, kw_only=True):
    """Everything wharf-balancer reads from its configuration file."""

    admin: AdminSettings = AdminSettings(port=DEFAULT_ADMIN_PORT)
    logging: LoggingSettings = LoggingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
