"""Storage backends: one package per database kind, behind ``base.Backend``."""
