"""Private implementation details of wecom_sync; no stable API."""
