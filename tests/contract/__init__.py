"""The backend contract: one suite, run identically over every database kind."""
