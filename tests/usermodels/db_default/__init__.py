"""User model variant db_default of the matrix."""
