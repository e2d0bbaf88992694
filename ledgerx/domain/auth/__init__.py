"""Identity: passwords, access tokens, refresh sessions, Google sign-in, principals."""
