"""wharf-broker: SQS and SNS on the wire, durable on SQLite (a PostgreSQL store is planned)."""
