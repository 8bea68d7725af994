"""Mutation testing for fdl: planted bugs the test suite must catch (see docs/mutation.md)."""
