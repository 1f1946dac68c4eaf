"""Who may call: client and admin keys, per-key rate limits, per-key daily cloud budgets."""
