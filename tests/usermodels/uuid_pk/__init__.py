"""User model variant uuid_pk of the matrix."""
