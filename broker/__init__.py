"""wharf-broker: SQS and SNS on the wire, durable on SQLite or PostgreSQL."""
