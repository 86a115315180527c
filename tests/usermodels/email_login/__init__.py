"""User model variant email_login of the matrix."""
