"""Shipped dictionaries; exported control vectors go to ./vectors by default."""
