"""User model variant required_fields of the matrix."""
