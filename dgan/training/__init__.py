"""Training logic, independent of any transport."""
