"""The schema of broker.toml. Decoded by :mod:`monitoring.configfile`; strict and frozen."""

from __future__ import annotations

from monitoring.settings import AdminSettings, LifecycleSettings, LoggingSettings, Section


class BrokerConfig(Section, frozen=True, kw_only=True):
    """Everything wharf-broker reads from its configuration file."""

    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
