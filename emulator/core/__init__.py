"""The vocabulary every part shares: errors, the rule of every value (fields), sizes and rates (units)."""
