"""Mercado Pago cloud access: the HTTP client, its error tree, and webhook signatures."""
