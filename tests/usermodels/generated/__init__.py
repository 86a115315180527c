"""User model variant generated of the matrix."""
