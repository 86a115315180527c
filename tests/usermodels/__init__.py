"""Custom user models for the user-model matrix (tests/test_user_models.py).

AUTH_USER_MODEL cannot change inside one process, so each variant has its own app (one model each, so that
their reverse accessors never clash) and its own settings module; the matrix runs ``scenario.py`` once per
variant in a pytest subprocess.
"""
