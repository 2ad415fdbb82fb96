"""Register messages, the register session and the cashier prompts catalogue."""
