"""Tests of the wecom_sync admin package, one module per area."""
